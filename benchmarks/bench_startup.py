"""Start-up time and peak memory of one training job, through the real CLI.

    python benchmarks/bench_startup.py --data ../shared/data/mnist.npz [--eval]

Runs `python -m ganlab.train epochs=1 steps_per_epoch=50` in a throw-away folder and
prints the time from the command's start to its first training step (as the job
reports it, plus the interpreter's start measured from outside), the whole wall time,
and the peak resident memory (RSS) of the job's process. Then the same job with a refused
value (`epochs=abc`) and with a data file that cannot be read: how long a user waits for
each error, and the CPU time it costs (both exit before TensorFlow loads).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--eval", action="store_true", help="also score 10,000 samples at the end (default: off)")
    args = parser.parse_args()
    job = ["epochs=1", "steps_per_epoch=50"]
    job += [f"data.path={Path(args.data).resolve()}"] if args.data else []
    job += [] if args.eval else ["eval.enabled=false", "objective=null"]
    result, wall, _ = run_job(job)
    if result.returncode != 0:
        raise SystemExit(f"the job failed (exit {result.returncode}): {result.stderr[-500:]}")
    inside = float(re.search(r"first step after ([0-9.]+) s", result.stdout).group(1))
    total_inside = float(re.search(r"; total ([0-9.]+) s", result.stdout).group(1))
    interpreter = wall - total_inside  # Python, Hydra, MLflow imports before the job's clock starts
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(f"machine: {os.cpu_count()} cores; job: {' '.join(job)}")
    print(f"command start -> first training step: {interpreter + inside:6.1f} s "
          f"({interpreter:.1f} s interpreter, imports, Hydra and MLflow; {inside:.1f} s checks, data, TensorFlow, nets)")
    print(f"whole command:                        {wall:6.1f} s")
    print(f"peak memory (RSS) of the job:         {peak_mb:6.0f} MB")
    refused, refused_wall, cpu = run_job([*job, "epochs=abc"])
    if refused.returncode == 0 or "epochs: got 'abc'" not in refused.stderr:
        raise SystemExit(f"expected the config check to refuse epochs=abc; got exit {refused.returncode}: "
                         f"{refused.stderr[-500:]}")
    print(f"a refused value (epochs=abc) -> error: {refused_wall:6.1f} s ({cpu:.1f} CPU-s)")
    unreadable, unreadable_wall, cpu = run_job([*job, f"data.path={Path(__file__).resolve()}"])
    if unreadable.returncode == 0 or "data.path" not in unreadable.stderr:
        raise SystemExit(f"expected data.path=<this script> to be refused; got exit {unreadable.returncode}: "
                         f"{unreadable.stderr[-500:]}")
    print(f"an unreadable data file -> error:     {unreadable_wall:6.1f} s ({cpu:.1f} CPU-s)")


def run_job(job: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """`python -m ganlab.train <job>` in a throw-away folder: (the finished process, wall seconds, CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "ganlab.train", *job], cwd=folder, capture_output=True, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


if __name__ == "__main__":
    main()

"""What MLflow's system metrics cost a job: training speed with `tracking.system_metrics` off and on.

    python benchmarks/bench_system_metrics.py --data ../shared/data/mnist.npz [--repeats 3] [--interval 10]

Runs the same short job (no evaluation) through the real CLI, alternating off and on
`--repeats` times in one throw-away folder, so both see the same machine load, and
prints each job's training speed (steps/s, as the job reports it) and the medians.
`--interval` is MLflow's sampling interval in seconds (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL;
its default, 10, is what jobs use).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    job = [f"epochs={args.epochs}", f"steps_per_epoch={args.steps}", "eval.enabled=false", "objective=null"]
    job += [f"data.path={Path(args.data).resolve()}"] if args.data else []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": str(args.interval)}
    speeds: dict[bool, list[float]] = {False: [], True: []}
    print(f"machine: {os.cpu_count()} cores; job: {' '.join(job)}; sampling every {args.interval:g} s")
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for on in (False, True):
                result = subprocess.run([sys.executable, "-m", "ganlab.train", *job, f"tracking.system_metrics={str(on).lower()}"],
                                        cwd=folder, capture_output=True, text=True, env=env, check=True)
                speed = float(re.search(r"\(([0-9.]+) steps/s\)", result.stdout).group(1))
                speeds[on].append(speed)
                print(f"  repeat {repeat + 1}, system metrics {'on ' if on else 'off'}: {speed:6.1f} steps/s", flush=True)
    off, on = statistics.median(speeds[False]), statistics.median(speeds[True])
    print(f"median: off {off:.1f} steps/s, on {on:.1f} steps/s ({(on - off) / off * 100:+.1f}%)")


if __name__ == "__main__":
    main()

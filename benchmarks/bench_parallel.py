"""Parallel jobs on one machine: the joblib launcher against Hydra's sequential launcher.

    python benchmarks/bench_parallel.py --data ../shared/data/mnist.npz [--jobs 4] [--steps 300]

Runs the same sweep of `--jobs` seeds twice through the real CLI, once job after job
(each job with all cores) and once with `hydra/launcher=parallel` (2 jobs at a time,
each with cores / 2 threads), into throw-away stores. Prints the total wall time of
each, their ratio, and the training throughput (steps/s summed over the jobs running
at once) read back from the runs' `steps_per_sec` metrics.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient


def run_sweep(cwd: Path, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ganlab.train", "-m", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - start


def job_rates(cwd: Path) -> list[float]:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ganlab")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`sweep.job_num` != ''")
    assert all(run.info.status == "FINISHED" for run in runs)
    return [run.data.metrics["steps_per_sec"] for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    data = [f"data.path={Path(args.data).resolve()}"] if args.data else []
    sweep = [f"seed=range(0,{args.jobs})", "epochs=1", f"steps_per_epoch={args.steps}", "eval.enabled=false",
             "objective=null", *data]
    with tempfile.TemporaryDirectory() as sequential, tempfile.TemporaryDirectory() as parallel:
        sequential, parallel = Path(sequential), Path(parallel)
        sequential_seconds = run_sweep(sequential, sweep)
        parallel_seconds = run_sweep(parallel, ["hydra/launcher=parallel", *sweep])
        sequential_rate = sum(job_rates(sequential)) / args.jobs  # one job at a time
        parallel_rate = sum(job_rates(parallel)) / args.jobs * 2  # two jobs at a time
    cores = os.cpu_count()
    print(f"machine: {cores} cores; {args.jobs} jobs of {args.steps} steps each, evaluation off")
    print(f"sequential launcher (1 job x {cores} threads): {sequential_seconds:7.1f} s wall, {sequential_rate:6.1f} steps/s")
    print(f"parallel launcher (2 jobs x {max(1, cores // 2)} threads):  {parallel_seconds:7.1f} s wall, {parallel_rate:6.1f} steps/s together")
    print(f"wall time sequential / parallel:           {sequential_seconds / parallel_seconds:7.2f}x")
    print(f"training throughput parallel / sequential: {parallel_rate / sequential_rate:7.2f}x")


if __name__ == "__main__":
    main()

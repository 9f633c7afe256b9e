"""What MLflow's system metrics cost a job: training speed with `tracking.system_metrics` off and on.

    python benchmarks/bench_system_metrics.py --data ../shared/data/mnist.npz [--repeats 3] [--interval 10]

Runs the same short job (no evaluation) through the real CLI, alternating off and on
`--repeats` times in one throw-away folder, so both see the same machine load, and
prints each job's training speed (steps/s, as the job reports it) and the medians.
`--interval` is MLflow's sampling interval in seconds (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL;
its default, 10, is what jobs use). On a loaded machine the jobs' speeds vary more than
the monitor can cost, so it also times the monitor's own work, one sample and its logging
into a SQLite store, which bounds the cost: that much CPU every interval.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
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
    cpu_ms = sample_cost_ms()
    print(f"the monitor's own work: {cpu_ms:.1f} ms of CPU per sample, so {cpu_ms / 10 / args.interval:.3f}% of one core "
          f"at one sample every {args.interval:g} s")


def sample_cost_ms(samples: int = 20) -> float:
    """CPU time of one monitor cycle as MLflow runs it: read CPU, memory, disk and network, look
    the run up, log the metrics (the monitor's thread does exactly this every interval)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("bench")).info.run_id
        monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
        monitor.collect_metrics()  # the first psutil calls set up their counters
        started = time.thread_time()
        for _ in range(samples):
            monitor.collect_metrics()
            client.get_run(run_id)
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        return (time.thread_time() - started) / samples * 1000


if __name__ == "__main__":
    main()

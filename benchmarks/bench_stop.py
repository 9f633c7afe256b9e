"""How long a stopped sweep takes to end: SIGTERM (a scheduler's stop, or `kill`) to a parallel sweep
whose jobs are training, until the sweep's process has exited with its runs closed.

    python benchmarks/bench_stop.py --data ../shared/data/mnist.npz [--repeats 3]

Starts `hydra/launcher=parallel dropout=0.1,0.3` through the real CLI into a throw-away store,
waits for both jobs' first trained checkpoint, sends SIGTERM to the sweep and prints the seconds
until it exited (each repeat), with the runs' statuses (all KILLED: `sweep.resume` continues them).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from ganlab.training import checkpoint


def trained_checkpoints(cwd: Path) -> int:
    """How many of the sweep's jobs have checkpointed a trained epoch."""
    folders = cwd.glob(f"outputs/multirun/*/*/{checkpoint.FOLDER}")
    return sum((folder / checkpoint.FILE).is_file() and checkpoint.find(folder).epoch >= 1 for folder in folders)


def stop_once(data: str) -> tuple[float, list[str]]:
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        sweep = subprocess.Popen([sys.executable, "-m", "ganlab.train", "-m", "hydra/launcher=parallel", "dropout=0.1,0.3",
                                  "epochs=100", "steps_per_epoch=5", "eval.every=100", f"data.path={Path(data).resolve()}"], cwd=cwd,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        while trained_checkpoints(cwd) < 2:
            if sweep.poll() is not None:
                raise SystemExit(f"the sweep ended (exit {sweep.returncode}) before both jobs trained an epoch")
            time.sleep(0.2)
        sent = time.perf_counter()
        sweep.send_signal(signal.SIGTERM)
        sweep.wait()
        seconds = time.perf_counter() - sent
        client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("ganlab").experiment_id])
        return seconds, sorted(run.info.status for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MNIST .npz (Keras layout)")
    parser.add_argument("--repeats", type=int, default=3, help="stops to time (default: %(default)s)")
    args = parser.parse_args()
    for repeat in range(args.repeats):
        seconds, statuses = stop_once(args.data)
        print(f"stop {repeat + 1}: SIGTERM to exit {seconds:.1f} s; runs {', '.join(statuses)}", flush=True)


if __name__ == "__main__":
    main()

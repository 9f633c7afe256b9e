"""Per-step loss logging: what `d_loss_step`/`g_loss_step` cost a training epoch, in one process.

    python benchmarks/bench_step_logging.py --data ../shared/data/mnist.npz [--epochs 3] [--steps 469]

Trains ganlab's default GAN (built from conf/, as bench_training.py does) for `--epochs`
epochs of `--steps` D steps and, after each, logs the epoch's per-step losses exactly as a
job does (`ganlab.training.epochs.log_step_losses`: `log_batch` calls of at most 1000 points)
into a real MLflow run in a fresh SQLite store. It prints the training time, the logging time
and the throughput without and with the logging (steps / training time, steps / (training +
logging) time), their ratio and the CPU. The training step itself is untouched: the per-step
losses are the ones the epoch returns anyway.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402

from bench_training import composed  # noqa: E402
from ganlab.core.data import load_dataset  # noqa: E402
from ganlab.core.machine import cpu_model  # noqa: E402
from ganlab.tracking.job_run import JobRun  # noqa: E402
from ganlab.tracking.store import default_tracking_uri  # noqa: E402
from ganlab.training.epochs import log_step_losses  # noqa: E402
from ganlab.gan.choices import build_trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: keras.datasets, else the shipped copy)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=469, help="D steps per epoch (469: an MNIST epoch)")
    args = parser.parse_args()
    dataset = load_dataset("mnist", args.data)
    keras.utils.set_random_seed(0)
    trainer = build_trainer(composed([]), dataset.x_train)
    trainer.train_epoch(10, progress=False)  # warm-up: tracing
    trained, logged = [], []
    with tempfile.TemporaryDirectory() as folder, JobRun(default_tracking_uri(folder), "bench", Path(folder), "bench", {}) as run:
        for _ in range(args.epochs):
            started = time.perf_counter()
            record = trainer.train_epoch(args.steps, progress=False)
            trained.append(time.perf_counter() - started)
            started = time.perf_counter()
            log_step_losses(run, record)
            logged.append(time.perf_counter() - started)
        points = len(run.client.get_metric_history(run.run_id, "d_loss_step"))
    assert points == args.epochs * args.steps, points
    without = args.steps * args.epochs / sum(trained)
    with_logging = args.steps * args.epochs / (sum(trained) + sum(logged))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.epochs} epochs of {args.steps} steps")
    print(f"training: {statistics.fmean(trained):.2f} s per epoch; logging its per-step losses "
          f"({2 * args.steps} points): {statistics.fmean(logged) * 1000:.0f} ms per epoch (median {statistics.median(logged) * 1000:.0f} ms)")
    print(f"throughput without per-step logging {without:.2f} steps/s, with it {with_logging:.2f} steps/s: "
          f"{with_logging / without:.2%} of it ({(1 - with_logging / without):.2%} slower)")


if __name__ == "__main__":
    main()

"""Training speed: ganlab's compiled step against the tutorial's loop, in one process.

    python benchmarks/bench_training.py --data ../shared/data/mnist.npz [--steps 200]

All variants train the same nets on the same data for the same number of steps after a
warm-up: the tutorial's loop, ganlab's step in float32 with and without TensorFlow's op
determinism, ganlab's step in float32 keeping an EMA of G's weights (ema=0.999), and
ganlab's step with precision=bf16. The script prints steps/s of each and their ratios to
the tutorial, the EMA's cost as a ratio to the same step without it, the FLOPs of one
step counted from the layer sizes, and the fraction of this machine's measured float32
matmul peak that the step reaches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import tutorial_loop  # noqa: E402
from ganlab.data import load_dataset, to_unit_range  # noqa: E402
from ganlab.gan import GanTrainer  # noqa: E402
from ganlab.models import build_discriminator, build_generator  # noqa: E402

MODEL = OmegaConf.create({
    "generator_units": [256, 512, 1024], "discriminator_units": [1024, 512, 256],
    "leaky_relu_slope": 0.2, "first_layer_init_stddev": 0.02,
})
RANDOM_DIM, DROPOUT = 100, 0.3


def step_flops(batch: int = 128) -> float:
    """FLOPs of one reference step (2 per multiply-add; backward = 2x forward)."""
    g_layers = [(100, 256), (256, 512), (512, 1024), (1024, 784)]
    d_layers = [(784, 1024), (1024, 512), (512, 256), (256, 1)]
    g = sum(a * b for a, b in g_layers) * 2
    d = sum(a * b for a, b in d_layers) * 2
    d_update = batch * g + 3 * (2 * batch) * d  # G forward for the fakes; D forward+backward on 2*batch
    g_update = 3 * batch * g + 3 * batch * d  # G and D forward+backward on batch
    return float(d_update + g_update)


def matmul_peak(size: int = 2048, repeats: int = 20) -> float:
    """Measured float32 matmul FLOP/s of this machine through TensorFlow."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    product = tf.function(lambda: tf.matmul(a, b))
    product().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = product()
    result.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def time_steps(step, steps: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        result = step()
    np.asarray(result[0])  # wait for the last step
    return steps / (time.perf_counter() - start)


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: keras.datasets)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    x_train = load_dataset("mnist", args.data).x_train
    keras.utils.set_random_seed(0)
    tutorial = tutorial_loop.build()
    tutorial_images = to_unit_range(x_train)  # the tutorial scales the whole set up front
    tutorial_rate = time_steps(lambda: tutorial_loop.train_step(*tutorial, tutorial_images), args.steps)

    def ganlab_rate(precision: str, ema: float | None = None) -> float:
        keras.utils.set_random_seed(0)
        trainer = GanTrainer(build_generator(MODEL, RANDOM_DIM, precision), build_discriminator(MODEL, DROPOUT, precision),
                             x_train, batch_size=128, label_smoothing=0.1, learning_rate=2e-4, beta_1=0.5, seed=0, ema=ema)
        return time_steps(trainer.train_step, args.steps)

    # TensorFlow can turn op determinism on but not off again: the "off" variant goes first.
    rates = {"ganlab fp32, op determinism off": ganlab_rate("fp32")}
    tf.config.experimental.enable_op_determinism()
    rates["ganlab fp32, op determinism on (default)"] = ganlab_rate("fp32")
    rates["ganlab fp32, ema=0.999"] = ganlab_rate("fp32", ema=0.999)  # op determinism on, as the default
    rates["ganlab bf16, op determinism on"] = ganlab_rate("bf16")
    ganlab_rate_fp32 = rates["ganlab fp32, op determinism on (default)"]
    ema_ratio = rates["ganlab fp32, ema=0.999"] / ganlab_rate_fp32

    flops = step_flops()
    peak = matmul_peak()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}, {args.steps} timed steps each")
    print(f"{'tutorial loop (predict + train_on_batch), fp32':45s} {tutorial_rate:7.2f} steps/s   1.00x")
    for name, rate in rates.items():
        print(f"{name:45s} {rate:7.2f} steps/s {rate / tutorial_rate:6.2f}x")
    print(f"{'EMA cost: ema=0.999 rate / fp32 (default)':45s} {ema_ratio:7.3f}x         ({1 / ema_ratio - 1:+.1%} time per step)")
    print(f"FLOPs per step (from layer sizes):            {flops / 1e9:7.2f} GFLOP")
    print(f"ganlab fp32 achieves:                         {flops * ganlab_rate_fp32 / 1e9:7.1f} GFLOP/s")
    print(f"measured matmul peak (2048^2, float32):       {peak / 1e9:7.1f} GFLOP/s")
    print(f"fraction of peak:                             {flops * ganlab_rate_fp32 / peak:7.1%}")


if __name__ == "__main__":
    main()

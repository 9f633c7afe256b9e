"""Training speed: ganlab's compiled step for every model x loss, against the tutorial's loop, in one process.

    python benchmarks/bench_training.py --data ../shared/data/mnist.npz [--steps 200]

Every variant is built from conf/ (the tutorial's values live there only) and trains on
the same data after a warm-up, timed as a whole epoch of `--steps` D steps
(`GanTrainer.train_epoch`, as a job runs it): the tutorial's loop; ganlab's default (mlp,
ns, fp32, op determinism on), also with op determinism off, with an EMA of G's weights
(ema=0.999) and with dtype=bf16; and every model x loss of the registries. It prints
steps/s (a step is one D update; G updates every n_critic-th step), each rate's ratio to
the tutorial's loop and the seconds of one MNIST epoch (469 steps), and for the default
the FLOPs of one step counted from its Dense layers and the fraction of this machine's
measured float32 matmul peak that the step reaches.
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
from hydra import compose, initialize_config_dir  # noqa: E402

import tutorial_loop  # noqa: E402
from ganlab.core.config import steps_per_epoch  # noqa: E402
from ganlab.core.data import load_dataset, to_unit_range  # noqa: E402
from ganlab.gan.choices import build_trainer  # noqa: E402
from ganlab.gan.losses import LOSSES  # noqa: E402
from ganlab.core.machine import cpu_model  # noqa: E402
from ganlab.gan.models import MODELS  # noqa: E402

CONF = Path(__file__).resolve().parent.parent / "conf"


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=["seed=0", *overrides])


def dense_step_flops(trainer) -> float:
    """FLOPs of one D step plus one G step of fully connected nets (2 per multiply-add; backward = 2x forward)."""
    def forward(net) -> int:
        return sum(2 * int(np.prod(layer.kernel.shape)) for layer in net.layers if isinstance(layer, keras.layers.Dense))

    g, d, batch = forward(trainer.generator), forward(trainer.discriminator), trainer.batch_size
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


def ganlab_rate(dataset, steps: int, overrides: list[str]) -> tuple[float, object]:
    """(D steps/s, trainer) of ganlab's trainer built from conf/ with `overrides`."""
    keras.utils.set_random_seed(0)
    trainer = build_trainer(composed(overrides), dataset.x_train)
    trainer.train_epoch(10, progress=False)  # warm-up: tracing
    start = time.perf_counter()
    trainer.train_epoch(steps, progress=False)
    return steps / (time.perf_counter() - start), trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: keras.datasets, else the shipped MNIST copy)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    dataset = load_dataset("mnist", args.data)
    epoch_steps = steps_per_epoch(composed([]), len(dataset.x_train))
    dcgan_steps = max(20, args.steps // 8)  # dcgan is far slower on a CPU
    keras.utils.set_random_seed(0)
    tutorial = tutorial_loop.build()
    tutorial_images = to_unit_range(dataset.x_train)  # the tutorial scales the whole set up front
    tutorial_rate = time_steps(lambda: tutorial_loop.train_step(*tutorial, tutorial_images), args.steps)

    # TensorFlow can turn op determinism on but not off again: the "off" variant goes first.
    rates = {"mlp ns fp32, op determinism off": ganlab_rate(dataset, args.steps, ["deterministic=false"])[0]}
    tf.config.experimental.enable_op_determinism()
    default, default_trainer = ganlab_rate(dataset, args.steps, [])
    rates["mlp ns fp32 (the default)"] = default
    rates["mlp ns fp32, ema=0.999"] = ganlab_rate(dataset, args.steps, ["ema=0.999"])[0]
    rates["mlp ns bf16"] = ganlab_rate(dataset, args.steps, ["dtype=bf16"])[0]
    for model in MODELS.names():
        for loss in LOSSES.names():
            if (model, loss) != ("mlp", "ns"):
                steps = args.steps if model == "mlp" else dcgan_steps
                rates[f"{model} {loss} fp32"] = ganlab_rate(dataset, steps, [f"model={model}", f"loss={loss}"])[0]

    flops = dense_step_flops(default_trainer)
    peak = matmul_peak()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}; "
          f"{args.steps} timed steps each (dcgan: {dcgan_steps})")
    print(f"{'variant':40s} {'steps/s':>8s} {'vs tutorial':>11s} {'s/epoch':>8s}")
    print(f"{'tutorial loop (predict + train_on_batch)':40s} {tutorial_rate:8.2f} {1:10.2f}x {epoch_steps / tutorial_rate:8.1f}")
    for name, rate in rates.items():
        print(f"{name:40s} {rate:8.2f} {rate / tutorial_rate:10.2f}x {epoch_steps / rate:8.1f}")
    print(f"EMA cost: ema=0.999 rate / default          {rates['mlp ns fp32, ema=0.999'] / default:7.3f}x")
    print(f"FLOPs per default step (Dense layers):      {flops / 1e9:7.2f} GFLOP")
    print(f"the default achieves:                       {flops * default / 1e9:7.1f} GFLOP/s")
    print(f"measured matmul peak (2048^2, float32):     {peak / 1e9:7.1f} GFLOP/s")
    print(f"fraction of peak:                           {flops * default / peak:7.1%}")


if __name__ == "__main__":
    main()

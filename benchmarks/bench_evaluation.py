"""Time a whole evaluation of 10,000 generated samples, with a cold and a warm cache.

    python benchmarks/bench_evaluation.py --data /path/to/mnist.npz [--num-samples 10000] [--repeats 3]

"Generated" samples are real training images with Gaussian pixel noise (std 0.3, clipped
to [-1, 1]): realistic scores without a trained generator. Cold = the real test set's
statistics are computed (empty cache dir); warm = a second Evaluator reads them back.
Each line gives wall-clock seconds; the evaluation lines also split the time by stage.

Old against new in one run: "old-equivalent" is each timed evaluation less the stages issue 23
added (per-class FID, the nearest-training-image search of memorization), i.e. the checks, the
classifier, FID/score/modes, KID, precision/recall and density/coverage; "new" is the whole
evaluation plus, as a training evaluation does, D's output on
2,000 training and 2,000 test images (the tutorial's discriminator, `ganlab.training.epochs.discriminator_gap`).
The CPU is printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ganlab.evaluation import classifier
from ganlab.core import machine
from ganlab.core.data import load_dataset, to_unit_range
from ganlab.evaluation.evaluator import Evaluator


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def noisy_real(dataset, num_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = to_unit_range(dataset.x_train[rng.choice(len(dataset.x_train), num_samples, replace=False)])
    return np.clip(images + rng.normal(0, 0.3, images.shape).astype(np.float32), -1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"CPU: {machine.cpu_model()}, {len(os.sched_getaffinity(0))} cores available")
    model, seconds = timed(classifier.load)
    print(f"load classifier                 {seconds:6.2f} s")
    dataset = load_dataset("mnist", args.data)
    images = noisy_real(dataset, args.num_samples)
    with tempfile.TemporaryDirectory() as cache:
        cold, seconds = timed(Evaluator.from_dataset, dataset, classifier=model, cache_dir=cache)
        assert not cold.cache_hit
        print(f"Evaluator, cold cache           {seconds:6.2f} s  ({cold.num_real} real images)")
        warm, seconds = timed(Evaluator.from_dataset, dataset, classifier=model, cache_dir=cache)
        assert warm.cache_hit
        print(f"Evaluator, warm cache           {seconds:6.2f} s")

    warm.evaluate(images[:1000])  # warm-up: thread pools, memory; not timed
    runs = [timed(warm.evaluate, images) for _ in range(args.repeats)]
    total = statistics.median(seconds for _, seconds in runs)
    print(f"evaluate {args.num_samples} samples (median of {args.repeats}) {total:6.2f} s")
    for stage in runs[0][0].seconds:
        stage_median = statistics.median(evaluation.seconds[stage] for evaluation, _ in runs)
        print(f"  {stage:<29} {stage_median:6.2f} s")
    new_stages = ("class_fid", "nearest_training")  # what issue 23 added to an evaluation
    old = statistics.median(seconds - sum(evaluation.seconds[stage] for stage in new_stages) for evaluation, seconds in runs)
    d_gap = seconds_d_gap(dataset, args.repeats)
    new = total + d_gap
    print(f"  D output on train+test images {d_gap:6.2f} s")
    print(f"old-equivalent evaluation       {old:6.2f} s")
    print(f"new evaluation (with D gap)     {new:6.2f} s  ({100 * (new / old - 1):+.0f}%)")
    print(f"cold cache end to end           {seconds_cold_end_to_end(dataset, model, images):6.2f} s")
    scores = runs[0][0].scores
    print("scores: " + ", ".join(f"{name} {value:.4g}" for name, value in scores.items()))


def seconds_d_gap(dataset, repeats: int) -> float:
    """Median seconds of `epochs.discriminator_gap` with the tutorial's (untrained) D and loss."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from ganlab.training import epochs
    from ganlab.gan.losses import build_loss
    from ganlab.gan.models import build_nets

    conf = Path(__file__).resolve().parent.parent / "conf"
    cfg = OmegaConf.create({"model": OmegaConf.load(conf / "model" / "mlp.yaml"), "random_dim": 100, "dropout": 0.3,
                            "dtype": "fp32"})
    _, discriminator = build_nets(cfg, dataset.x_train.shape[1:])
    trainer = SimpleNamespace(discriminator=discriminator, image_shape=tuple(discriminator.input_shape[1:]),
                              loss=build_loss(OmegaConf.load(conf / "loss" / "ns.yaml").loss, 0.1))
    images = epochs.d_gap_images(dataset.x_train, dataset.x_test, seed=0)
    epochs.discriminator_gap(trainer, *images)  # warm-up
    return statistics.median(timed(epochs.discriminator_gap, trainer, *images)[1] for _ in range(repeats))


def seconds_cold_end_to_end(dataset, model, images) -> float:
    """Empty cache: build the Evaluator (real statistics) and score, as a first training eval does."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        Evaluator.from_dataset(dataset, classifier=model, cache_dir=cache).evaluate(images)
        return time.perf_counter() - start


if __name__ == "__main__":
    main()

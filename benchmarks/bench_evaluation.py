"""Time a whole evaluation of 10,000 generated samples, with a cold and a warm cache.

    python benchmarks/bench_evaluation.py --data /path/to/mnist.npz [--num-samples 10000] [--repeats 3]

"Generated" samples are real training images with Gaussian pixel noise (std 0.3, clipped
to [-1, 1]): realistic scores without a trained generator. Cold = the real test set's
statistics are computed (empty cache dir); warm = a second Evaluator reads them back.
Each line gives wall-clock seconds; the evaluation lines also split the time by stage.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from ganlab import classifier
from ganlab.data import load_dataset, to_unit_range
from ganlab.evaluation import Evaluator


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
    print(f"cold cache end to end           {seconds_cold_end_to_end(dataset, model, images):6.2f} s")
    scores = runs[0][0].scores
    print("scores: " + ", ".join(f"{name} {value:.4g}" for name, value in scores.items()))


def seconds_cold_end_to_end(dataset, model, images) -> float:
    """Empty cache: build the Evaluator (real statistics) and score, as a first training eval does."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        Evaluator.from_dataset(dataset, classifier=model, cache_dir=cache).evaluate(images)
        return time.perf_counter() - start


if __name__ == "__main__":
    main()

"""Score a saved generator, a finished MLflow run, or real images against the MNIST test set.

    python -m ganlab.evaluate --generator path/to/generator.keras [--num-samples 10000] [--seed 0]
    python -m ganlab.evaluate --run-id RUN_ID [--tracking-uri URI]
    python -m ganlab.evaluate --real train        # the floor: real training images vs test

A generator is a Keras model from (N, random_dim) N(0, 1) noise to (N, 784) tanh images;
random_dim is read from its input shape. `--run-id` downloads the run's
`models/generator.keras`, scores it and logs every score into that run at its last
epoch (the last step of `g_loss`, else 0). `--real train` scores real training images
the same way: the best any generator can hope for. The scores are those of
`ganlab.evaluation.Evaluator`; the table says which direction is better for each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ganlab import classifier as classifier_module
from ganlab.data import load_dataset, to_unit_range
from ganlab.errors import InputError
from ganlab.evaluation import DIRECTION, Evaluator, evaluation_noise
from ganlab.metrics import SCORE_NAMES

GENERATOR_ARTIFACT = "models/generator.keras"


def load_generator(path: str | Path):
    """Load a .keras generator (compile=False: scoring needs no optimizer) or raise InputError."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"--generator: {str(path)!r} does not exist. Give a generator saved with "
            "model.save('generator.keras') (training runs log it as models/generator.keras)."
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, TypeError... for bad files
        raise InputError(
            f"--generator: {str(path)!r} cannot be loaded as a Keras model ({error}). Give a "
            "file written by model.save('generator.keras')."
        ) from error
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 2 or shape[1] is None:
        raise InputError(
            f"--generator: {str(path)!r} has input shape {model.input_shape}; expected one "
            "input of shape (None, random_dim), the noise vector."
        )
    return model


def generate(generator, num_samples: int, seed: int, batch_size: int = 2000) -> np.ndarray:
    """num_samples images (N, 784) from N(0, 1) noise drawn with a seeded NumPy generator."""
    import keras

    random_dim = generator.input_shape[1]
    noise = evaluation_noise(seed, num_samples, random_dim)
    batches = [
        keras.ops.convert_to_numpy(generator(noise[start : start + batch_size], training=False))
        for start in range(0, num_samples, batch_size)
    ]
    images = np.concatenate(batches)
    if int(np.prod(images.shape[1:])) != 784:
        raise InputError(
            f"--generator: the model outputs shape {images.shape[1:]} per sample; expected 784 "
            "pixels ((784,) or (28, 28)) in [-1, 1]."
        )
    return images.reshape(num_samples, 784)


def real_images(dataset, split: str, num_samples: int, seed: int) -> np.ndarray:
    """A seeded random subset of real images of one split, scaled like generator output."""
    pool = getattr(dataset, f"x_{split}")
    if num_samples > len(pool):
        raise InputError(f"--num-samples {num_samples} exceeds the {len(pool)} {split} images of {dataset.source}.")
    chosen = np.random.default_rng(seed).choice(len(pool), num_samples, replace=False)
    return to_unit_range(pool[np.sort(chosen)])


def find_run(run_id: str, tracking_uri: str):
    """(MlflowClient, Run) for an existing run, or InputError saying where we looked."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _check_tracking_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        return client, client.get_run(run_id)
    except MlflowException as error:
        raise InputError(
            f"--run-id: no run {run_id!r} in the tracking store {tracking_uri} ({error.message}). "
            "Copy the id from the MLflow UI or `mlflow runs search`, and pass --tracking-uri if "
            "the runs live elsewhere."
        ) from error


def score_run(client, run, evaluator: Evaluator, num_samples: int, seed: int):
    """Download a run's generator, score it, log the scores into the run at its last epoch.

    Returns (Evaluation, step), step being the last step of `g_loss` (0 if none).
    """
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the report clean
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, GENERATOR_ARTIFACT, folder)
        except (MlflowException, OSError) as error:
            raise InputError(
                f"--run-id: run {run_id} (status {run.info.status}) has no artifact "
                f"{GENERATOR_ARTIFACT!r} ({error}). Only runs that finished training save the "
                "generator; pick a finished run."
            ) from error
        evaluation = evaluator.evaluate(generate(load_generator(local), num_samples, seed))
    history = client.get_metric_history(run_id, "g_loss")
    step = max((metric.step for metric in history), default=0)
    for name, value in evaluation.scores.items():
        client.log_metric(run_id, name, value, step=step)
    return evaluation, step


def run_seed(run) -> int:
    """The run's `seed` param (its evaluation noise was drawn with it), else 0."""
    try:
        return int(run.data.params.get("seed", 0))
    except ValueError:
        return 0


def _check_tracking_store(tracking_uri: str) -> None:
    # MLflow would silently create an empty SQLite store; a missing file means a wrong place.
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix) :]).is_file():
        raise InputError(
            f"--tracking-uri: the SQLite store {tracking_uri[len(prefix) :]!r} does not exist. Run "
            "this command in the directory where you trained (its mlruns/ holds the store) or pass "
            "--tracking-uri sqlite:////path/to/mlruns/mlflow.db."
        )


def format_table(scores: dict[str, float], histogram: np.ndarray | None = None) -> str:
    lines = [f"{'score':<18}{'value':>12}   better"]
    for name in SCORE_NAMES:
        value = scores[name]
        shown = f"{int(value)}" if name == "modes_covered" else f"{value:.5g}"
        lines.append(f"{name:<18}{shown:>12}   {DIRECTION[name]}")
    if histogram is not None:
        counts = "  ".join(f"{digit}:{count}" for digit, count in enumerate(histogram))
        lines.append(f"predicted digits  {counts}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ganlab.evaluate",
        description="Score generated MNIST digits against the 10,000 test images (FID, KID, ...).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--generator", help="a .keras generator: (N, random_dim) noise -> (N, 784) in [-1, 1]")
    what.add_argument("--run-id", help="a finished MLflow run: score its models/generator.keras, log the scores")
    what.add_argument("--real", choices=["train"], help="score real training images (the floor)")
    parser.add_argument("--data", default=None, help="MNIST .npz (Keras layout) or IDX folder; default: keras.datasets")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds the noise or the real subset; default 0, or for --run-id the run's own seed "
        "(which reproduces the scores the run logged at its last epoch)",
    )
    parser.add_argument("--tracking-uri", default=None, help="default: mlruns/mlflow.db in this directory")
    parser.add_argument("--weights", default=None, help="classifier weights; default: the shipped ones")
    parser.add_argument(
        "--cache-dir", default=None, help="real-statistics cache; default $GANLAB_CACHE_DIR or ~/.cache/ganlab"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Do what the arguments say; return the report to print."""
    if args.num_samples < 1:
        raise InputError(f"--num-samples must be a positive integer; got {args.num_samples}.")
    # Check the generator or the run first: a typo should not wait for the real statistics.
    if args.generator:
        generator = load_generator(args.generator)
    elif args.run_id:
        from ganlab.tracking import default_tracking_uri

        client, mlflow_run = find_run(args.run_id, args.tracking_uri or default_tracking_uri())
    dataset = load_dataset("mnist", args.data)
    evaluator = Evaluator.from_dataset(
        dataset, classifier=classifier_module.load(args.weights), cache_dir=args.cache_dir
    )
    reference = f"{evaluator.num_real} real test images of {dataset.source}"
    seed = 0 if args.seed is None else args.seed
    if args.generator:
        evaluation = evaluator.evaluate(generate(generator, args.num_samples, seed))
        title = f"{args.num_samples} samples (seed {seed}) of {args.generator} vs {reference}"
    elif args.run_id:
        if args.seed is None:
            seed = run_seed(mlflow_run)
        evaluation, step = score_run(client, mlflow_run, evaluator, args.num_samples, seed)
        title = f"{args.num_samples} samples (seed {seed}) of run {args.run_id} vs {reference} (logged at step {step})"
    else:
        evaluation = evaluator.evaluate(real_images(dataset, args.real, args.num_samples, seed))
        title = f"{args.num_samples} real {args.real} images (seed {seed}) vs {reference}"
    return f"{title}\n{format_table(evaluation.scores, evaluation.histogram)}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

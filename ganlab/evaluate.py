"""Score a saved generator, an MLflow run, or real images against the dataset's test set.

    python -m ganlab.evaluate --generator path/to/generator.keras [--num-samples 10000] [--seed 0]
    python -m ganlab.evaluate --generator fashion.keras --dataset fashion_mnist --weights fashion.weights.h5
    python -m ganlab.evaluate --run-id RUN_ID [--tracking-uri URI]
    python -m ganlab.evaluate --real train        # the floor: real training images vs test

A generator is a Keras model from (N, random_dim) N(0, 1) noise to tanh images in [-1, 1],
shaped (N, 784), (N, 28, 28) or (N, 28, 28, 1) (`ganlab.core.data.IMAGE_LAYOUTS`). `--dataset`
(default mnist) names what the generator imitates; as in training, the classifier must
have been trained on it, else the command refuses before loading any data.
`--run-id` re-scores a run exactly as training scored it: the run's own
`eval.num_samples`, dataset, classifier, noise seed and `eval.repeats` (each score the mean
over that many noise draws, fid's spread over them as `fid_sampling_std`), on its final generator (or, for a
run that did not finish, the generator of its last checkpoint, and it says which epoch).
It logs the scores into the run under `rescore_<score>` at that epoch, so a re-score can
never replace a number the run was trained to; it refuses to log twice at one epoch.
The scores and which way is better come from the registry `ganlab.core.scores`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ganlab.core import runtime

runtime.quiet_console()  # before anything imports TensorFlow

import numpy as np  # noqa: E402

from ganlab.evaluation import classifier as classifier_module  # noqa: E402
from ganlab.core import scores
from ganlab.tracking import store as tracking  # noqa: E402
from ganlab.core.data import DATASETS, IMAGE_LAYOUTS_TEXT, as_images, is_image_batch, load_dataset, to_unit_range  # noqa: E402
from ganlab.core.errors import InputError, report_or_refuse  # noqa: E402
from ganlab.evaluation import metrics  # noqa: E402
from ganlab.evaluation.evaluator import Evaluator, evaluation_noise, evaluation_noises  # noqa: E402

GENERATOR_ARTIFACT = "models/generator.keras"
MAX_SAMPLES = 200_000  # the scores need memory for the samples' pairwise distances in blocks; more says nothing new
DEFAULT_DATASET = DATASETS[0]  # mnist: what --generator and --real score when --dataset is not given


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
    try:
        output = model.output_shape
    except (AttributeError, ValueError):  # a subclassed model may not know it: checked when it generates
        output = None
    known = isinstance(output, tuple) and None not in output[1:]
    if isinstance(output, list) or (known and not is_image_batch(output)):
        raise InputError(_output_shape_message(f"--generator: {str(path)!r}", output))
    return model


def _output_shape_message(what: str, shape) -> str:
    return f"{what} outputs shape {shape}; expected one output of images in [-1, 1] shaped {IMAGE_LAYOUTS_TEXT}."


def generate(generator, num_samples: int, seed: int, batch_size: int = 2000,
             name: str = "--generator: the model", noise: np.ndarray | None = None) -> np.ndarray:
    """num_samples images (N, *data.IMAGE_SHAPE) from the same N(0, 1) noise training scores on
    (or from `noise`, one of a run's eval.repeats draws); `name` says which generator in an error."""
    import keras

    noise = evaluation_noise(seed, num_samples, generator.input_shape[1]) if noise is None else noise
    batches = [
        keras.ops.convert_to_numpy(generator(noise[start : start + batch_size], training=False))
        for start in range(0, num_samples, batch_size)
    ]
    images = np.concatenate(batches)
    if not is_image_batch(images.shape):
        raise InputError(_output_shape_message(name, images.shape))
    return as_images(images)


def real_images(dataset, split: str, num_samples: int, seed: int) -> np.ndarray:
    """A seeded random subset of real images of one split, scaled like generator output."""
    pool = getattr(dataset, f"x_{split}")
    if num_samples > len(pool):
        raise InputError(f"--num-samples {num_samples} exceeds the {len(pool)} {split} images of {dataset.source}.")
    chosen = np.random.default_rng(seed).choice(len(pool), num_samples, replace=False)
    return to_unit_range(pool[np.sort(chosen)])


@dataclass
class RunScoring:
    """How a run was scored in training, read back from its params."""

    run: object
    num_samples: int
    seed: int
    data_name: str
    data_path: str | None
    classifier: str | None
    repeats: int = 1  # eval.repeats: the noise draws each logged score is the mean of

    @classmethod
    def of(cls, run) -> "RunScoring":
        params = run.data.params
        if params.get("eval.enabled") == "False":
            raise InputError(f"--run-id: run {run.info.run_id} was trained with eval.enabled=false; it has no scores to "
                             "reproduce. Score its generator with --generator instead.")
        try:
            return cls(run, int(params.get("eval.num_samples", 10000)), int(params.get("seed", 0)),
                       params.get("data.name", "mnist"), params.get("data.path"), params.get("eval.classifier"),
                       int(params.get("eval.repeats", 1)))  # a run from before eval.repeats scored one draw
        except ValueError as error:
            raise InputError(f"--run-id: run {run.info.run_id} has unreadable params ({error}).") from error


def run_generator(client, run, folder: str):
    """(generator, epoch) of a run: its final generator, or the last checkpoint's of a run that did not finish."""
    from mlflow.exceptions import MlflowException

    epochs = int(run.data.params.get("epochs", 0))
    try:
        return load_generator(client.download_artifacts(run.info.run_id, GENERATOR_ARTIFACT, folder)), epochs
    except (MlflowException, OSError):
        pass
    from ganlab.training import checkpoint
    from ganlab.core.data import IMAGE_SHAPE
    from ganlab.gan.trainer import restore_generator
    from ganlab.gan.models import build_nets

    output_dir = run.data.tags.get(tracking.OUTPUT_DIR_TAG)
    if not output_dir:
        raise InputError(f"--run-id: run {run.info.run_id} ({run.info.status}) has neither {GENERATOR_ARTIFACT} nor a "
                         "recorded output folder with a checkpoint to score.")
    found = checkpoint.find(Path(output_dir))
    generator, _ = build_nets(found.config, IMAGE_SHAPE)
    values, _ = checkpoint.load_state(found)
    restore_generator(generator, values)
    return generator, found.epoch


def check_classifier(weights: str | None, dataset: str, whose: str) -> None:
    """Refuse, before any data is loaded, classifier weights trained on another dataset than `dataset`
    (the check training makes, `classifier.check`), naming this command's options."""
    try:
        classifier_module.check(weights, dataset)
    except classifier_module.DatasetMismatch as mismatch:
        raise InputError(
            f"--weights: the classifier {str(mismatch.weights_path)!r} was trained on {mismatch.trained_on}, but "
            f"{whose} {dataset} images; its scores of them would mean nothing. --dataset takes one of "
            f"{', '.join(DATASETS)} (default {DEFAULT_DATASET}) and must be the dataset the --weights were trained on: "
            f"pass --weights of a classifier trained on {dataset} (train one with "
            f"{classifier_module.train_command(dataset)}), or --dataset {mismatch.trained_on} if the images are "
            f"{mismatch.trained_on}."
        ) from mismatch


def score_run(client, run, args) -> tuple[str, dict[str, float], np.ndarray]:
    """Re-score a run as training did; log `rescore_*` into it at the scored epoch."""
    scoring = RunScoring.of(run)
    if args.dataset is not None and args.dataset != scoring.data_name:
        raise InputError(f"--dataset: run {run.info.run_id} was trained on {scoring.data_name} (its data.name), not "
                         f"{args.dataset}; --run-id scores a run on its own dataset, so leave --dataset out.")
    weights = args.weights or scoring.classifier
    check_classifier(weights, scoring.data_name, f"run {run.info.run_id} was trained on")
    dataset = load_dataset(scoring.data_name, args.data or scoring.data_path)
    evaluator = Evaluator.from_dataset(dataset, classifier=classifier_module.load(weights, dataset=dataset.name),
                                       cache_dir=args.cache_dir)
    with tempfile.TemporaryDirectory() as folder:
        generator, epoch = run_generator(client, run, folder)
        # the run's eval.repeats draws, as training drew and combined them: the logged score is their mean
        draws = [evaluator.evaluate(generate(generator, scoring.num_samples, scoring.seed, noise=noise,
                                             name=f"--run-id: run {run.info.run_id}'s generator"))
                 for noise in evaluation_noises(scoring.seed, scoring.num_samples, generator.input_shape[1],
                                                scoring.repeats)]
        found = metrics.mean_over_draws(draws)
    run_id = run.info.run_id
    already = {point.step for point in client.get_metric_history(run_id, scores.rescore(scores.FID))}
    if args.log and epoch in already:
        raise InputError(f"--run-id: run {run_id} already holds a re-score at epoch {epoch} "
                         f"({scores.rescore(scores.FID)}); it is not logged twice. Use --no-log to just print the scores.")
    if args.log:
        for name, value in found.items():
            client.log_metric(run_id, scores.rescore(name), value, step=epoch)
    draws_text = f" x {scoring.repeats} draws (eval.repeats), mean" if scoring.repeats > 1 else ""
    title = (f"run {run_id} ({run.info.status}) at epoch {epoch}: {scoring.num_samples} samples (seed {scoring.seed}){draws_text} "
             f"vs {evaluator.num_real} real test images of {dataset.source}"
             + (f"; logged as {scores.RESCORE_PREFIX}<score> at step {epoch}" if args.log else ""))
    return title, found, draws[0].histogram


def format_table(found: dict[str, float], histogram: np.ndarray | None = None) -> str:
    lines = [f"{'score':<18}{'value':>12}   better"]
    for metric in scores.EVALUATION:
        lines.append(f"{metric.name:<18}{scores.format_value(metric.name, found[metric.name]):>12}   {metric.direction_text}")
    if histogram is not None:
        counts = "  ".join(f"{digit}:{count}" for digit, count in enumerate(histogram))
        lines.append(f"predicted classes  {counts}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ganlab.evaluate",
        description="Score generated images against the dataset's 10,000 test images (FID, KID, precision/recall, ...).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--generator", help=f"a .keras generator: (N, random_dim) noise -> images in [-1, 1], {IMAGE_LAYOUTS_TEXT}")
    what.add_argument("--run-id", help="an MLflow run: re-score it as training did, log rescore_* into it")
    what.add_argument("--real", choices=["train"], help="score real training images (the floor)")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help=f"what the generator imitates or --real reads (default {DEFAULT_DATASET}); the classifier "
                        "must be trained on it (a run uses its own)")
    parser.add_argument("--data", default=None, help="the dataset's .npz (Keras layout) or IDX folder; default: "
                        "keras.datasets (for --run-id: the run's own data.path)")
    parser.add_argument("--num-samples", type=int, default=10000, help="for --generator and --real (a run uses its own)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise or the real subset (a run uses its own)")
    parser.add_argument("--tracking-uri", default=None, help="default: mlruns/mlflow.db in this directory")
    parser.add_argument("--no-log", dest="log", action="store_false", help="--run-id: print the scores, log nothing")
    parser.add_argument("--weights", default=None, help="classifier weights; default: the shipped ones (or the run's)")
    parser.add_argument("--cache-dir", default=None, help="real-statistics cache; default $GANLAB_CACHE_DIR or ~/.cache/ganlab")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Do what the arguments say; return the report to print."""
    if not 1 <= args.num_samples <= MAX_SAMPLES:
        raise InputError(f"--num-samples: got {args.num_samples}; expected 1 to {MAX_SAMPLES:,} (10000 is the standard).")
    if not 0 <= args.seed < 2**32:
        raise InputError(f"--seed: got {args.seed}; expected an integer from 0 to 2**32 - 1.")
    if args.run_id:
        client, _ = tracking.open_reader(args.tracking_uri)
        title, found, histogram = score_run(client, tracking.find_run(client, args.run_id), args)
        return f"{title}\n{format_table(found, histogram)}"
    generator = load_generator(args.generator) if args.generator else None  # a typo fails before the statistics
    name = args.dataset or DEFAULT_DATASET
    check_classifier(args.weights, name, "the generator imitates" if generator is not None else "--real reads")
    dataset = load_dataset(name, args.data)
    evaluator = Evaluator.from_dataset(dataset, classifier=classifier_module.load(args.weights, dataset=dataset.name),
                                       cache_dir=args.cache_dir)
    reference = f"{evaluator.num_real} real test images of {dataset.source}"
    if generator is not None:
        images = generate(generator, args.num_samples, args.seed, name=f"--generator: {args.generator!r}")
        evaluation = evaluator.evaluate(images)
        title = f"{args.num_samples} samples (seed {args.seed}) of {args.generator} vs {reference}"
    else:
        evaluation = evaluator.evaluate(real_images(dataset, args.real, args.num_samples, args.seed))
        title = f"{args.num_samples} real {args.real} images (seed {args.seed}) vs {reference}"
    return f"{title}\n{format_table(evaluation.scores, evaluation.histogram)}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_or_refuse(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())

"""Checks of a composed config before anything is built or trained.

Hydra composes whatever it is given; `validate(cfg)` is where a value of the wrong type
or out of range becomes an `InputError` that names the key and says what is valid.
Checks that need the data (batch_size against the training-set size) are in
`validate_against_data`.
"""

from __future__ import annotations

import numbers

from omegaconf import DictConfig, OmegaConf

from ganlab.errors import InputError
from ganlab.metrics import SCORE_NAMES as EVALUATION_METRICS

MODELS = ("mlp",)
OPTIMIZERS = ("adam",)
PRECISIONS = ("fp32", "bf16")
TRAINING_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "steps_per_sec")
MIN_EVAL_SAMPLES = 200  # the Frechet distance needs more samples than feature dimensions


def validate(cfg: DictConfig) -> None:
    """Raise InputError for the first config value that is missing, mistyped or out of range."""
    _integer(cfg, "seed", minimum=0, maximum=2**32 - 1)
    _integer(cfg, "epochs", minimum=0)
    _integer(cfg, "steps_per_epoch", minimum=1, nullable=True)
    _integer(cfg, "batch_size", minimum=1)
    _integer(cfg, "random_dim", minimum=1)
    _fraction(cfg, "dropout")
    _fraction(cfg, "label_smoothing")
    _boolean(cfg, "deterministic")
    _integer(cfg, "threads", minimum=1, nullable=True)

    _choice(cfg, "precision", PRECISIONS)
    _choice(cfg, "model.name", MODELS)
    _choice(cfg, "model.precision", PRECISIONS)
    for key in ("model.generator_units", "model.discriminator_units"):
        units = OmegaConf.select(cfg, key)
        if not OmegaConf.is_list(units) or not units or not all(_is_int(u) and u >= 1 for u in units):
            raise InputError(f"{key}: got {_show(units)}; expected a non-empty list of positive integers, e.g. [256, 512, 1024].")
    _number(cfg, "model.leaky_relu_slope", minimum=0.0)
    _number(cfg, "model.first_layer_init_stddev", minimum=0.0, exclusive=True)

    _choice(cfg, "optimizer.name", OPTIMIZERS)
    _number(cfg, "optimizer.lr", minimum=0.0, exclusive=True)
    _fraction(cfg, "optimizer.beta_1")

    _boolean(cfg, "eval.enabled")
    _integer(cfg, "eval.every", minimum=1)
    _integer(cfg, "eval.num_samples", minimum=MIN_EVAL_SAMPLES)
    if cfg.objective in EVALUATION_METRICS and not cfg.eval.enabled:
        raise InputError(
            f"objective: {cfg.objective} is an evaluation score, but eval.enabled is false; "
            f"turn evaluation on, or pick a training metric ({', '.join(TRAINING_METRICS)}) or null."
        )
    _choice(cfg, "objective", TRAINING_METRICS + EVALUATION_METRICS + (None,))

    _optional_string(cfg, "eval.classifier", "a path to classifier weights (.weights.h5 with its .json beside it)")
    _optional_string(cfg, "tracking.uri", "an MLflow tracking URI such as http://127.0.0.1:5000 or sqlite:///path/mlflow.db")
    experiment = OmegaConf.select(cfg, "tracking.experiment", default="<missing>")
    if not isinstance(experiment, str) or not experiment.strip():
        raise InputError(f"tracking.experiment: got {_show(experiment)}; expected a non-empty experiment name.")

    path = OmegaConf.select(cfg, "data.path")
    if path is not None and not isinstance(path, str):
        raise InputError(f"data.path: got {_show(path)}; expected null (Keras download/cache) or a path to a .npz or IDX folder.")


def validate_against_data(cfg: DictConfig, num_train_images: int) -> None:
    """Checks that need the loaded data."""
    if cfg.batch_size > num_train_images:
        raise InputError(
            f"batch_size: got {cfg.batch_size}, but the training set holds only "
            f"{num_train_images} images; valid: 1 to {num_train_images}."
        )


def steps_per_epoch(cfg: DictConfig, num_train_images: int) -> int:
    """`steps_per_epoch`, or when null the tutorial's round(N / batch_size) (469 on MNIST)."""
    if cfg.steps_per_epoch is not None:
        return int(cfg.steps_per_epoch)
    return max(1, round(num_train_images / cfg.batch_size))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _integer(cfg, key, minimum, maximum=None, nullable=False):
    value = OmegaConf.select(cfg, key, default="<missing>")
    if value is None and nullable:
        return
    valid = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if nullable:
        valid += ", or null"
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise InputError(f"{key}: got {_show(value)}; expected {valid}.")


def _number(cfg, key, minimum, exclusive=False):
    value = OmegaConf.select(cfg, key, default="<missing>")
    below = value <= minimum if exclusive and _is_number(value) else _is_number(value) and value < minimum
    if not _is_number(value) or below:
        relation = ">" if exclusive else ">="
        raise InputError(f"{key}: got {_show(value)}; expected a number {relation} {minimum}.")


def _fraction(cfg, key):
    value = OmegaConf.select(cfg, key, default="<missing>")
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise InputError(f"{key}: got {_show(value)}; expected a number in [0, 1), e.g. {key}=0.1.")


def _optional_string(cfg, key, valid):
    value = OmegaConf.select(cfg, key, default="<missing>")
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise InputError(f"{key}: got {_show(value)}; expected null or {valid}.")


def _boolean(cfg, key):
    value = OmegaConf.select(cfg, key, default="<missing>")
    if not isinstance(value, bool):
        raise InputError(f"{key}: got {_show(value)}; expected true or false.")


def _choice(cfg, key, choices):
    value = OmegaConf.select(cfg, key, default="<missing>")
    if value not in choices:
        shown = ", ".join("null" if choice is None else choice for choice in choices)
        raise InputError(f"{key}: got {_show(value)}; valid choices: {shown}.")

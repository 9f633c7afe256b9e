"""The job's config in one pass: resolved, checked and typed once, before anything is built or trained.

Hydra composes whatever it is given; `typed_config` is where it becomes a `JobConfig`, the frozen,
typed object a job reads, or an `InputError` that names the key and says what is valid.
The tracking keys are checked first (`validate_tracking`: a bad store cannot hold a FAILED
run); a refusal of any other key is a `RefusedConfig` that carries the checked tracking
settings, so the job records it in a FAILED run. Group choices are checked against the
registries the caller hands in (the gan wing's, `ganlab.gan.choices`): core never imports
a wing above it. Checks that need the data (batch_size against the training-set size) are
in `validate_against_data`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ganlab.core import scores
from ganlab.core.errors import InputError
from ganlab.core.job_config import JobConfig, TrackingConfig, check_batch_size, derived_steps

DTYPES = ("fp32", "bf16")  # the `dtype` knob's choices; models.py maps each to a Keras policy
CHOICE_GROUPS = ("model", "optimizer", "loss", "data")  # config groups whose option is named by `<group>.name`
# Keys that say where a job runs and reads from, never what it computes: a resume may point
# them elsewhere, and two runs differing only in them are the same experiment.
WHERE_KEYS = ("data.path", "tracking.uri", "threads")
SEED_KEY = "seed"  # the seed knob: a sweep's replicates differ only in it
OBJECTIVE_AT_FINAL, OBJECTIVE_AT_BEST = "final", "best"  # which value of the objective a job returns
OBJECTIVE_AT = (OBJECTIVE_AT_FINAL, OBJECTIVE_AT_BEST)
CHECKPOINT_KEEP = ("last", "none")
MIN_EVAL_SAMPLES = 200  # the Frechet distance needs more samples than feature dimensions
# eval.repeats' bound: the draws are allocated up front (20 x 10,000 x 100 float32: 80 MB), and the
# mean of 20 draws already leaves a score's draw-to-draw spread about 4.5 times smaller than one draw's.
MAX_EVAL_REPEATS = 20
# No `file:`: MLflow 3 refuses a file store for the model logging every job does.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
# Experiment names become folder names under mlruns/artifacts/: no separators, no "..".
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_MISSING = "<missing>"


def resolve_all(cfg: DictConfig, keys=None) -> None:
    """Resolve every interpolation of `keys` (default: all but Hydra's own section) once, so
    `epochs='${oc.env:NOPE}'` fails here naming its key."""
    try:
        for key in keys or [key for key in cfg if key != "hydra"]:
            node = OmegaConf.select(cfg, str(key))
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        reason = str(error).splitlines()[0]
        raise InputError(f"{key}: cannot be resolved ({type(error).__name__}: {reason}).") from None


def refuse_new_keys(overrides) -> None:
    """`+key=value` adds a key no ganlab config has (Hydra refuses `+` for a key that exists):
    refused, so a misspelt knob is never trained with silently. Config groups and Hydra's own keys pass."""
    from ganlab.core.defaults import CONF_DIR

    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir()}
    chosen = {str(item).split("=", 1)[0].lstrip("+~"): str(item).split("=", 1)[1]
              for item in overrides if "=" in str(item) and str(item).split("=", 1)[0].lstrip("+~") in groups}
    for item in overrides:
        key = str(item).split("=", 1)[0]
        name = key.lstrip("+")
        if not key.startswith("+") or name.split(".")[0] == "hydra":
            continue
        group = name.split(".")[0]
        if group in groups and "." not in name:
            continue  # `+experiment=baseline`: a group's option chosen
        if key.startswith("++") and _in_schema(CONF_DIR, name, group if group in groups else None, chosen):
            continue  # `++epochs=3`: a key the config has, set
        where = (f"the {group} option {chosen.get(group, 'chosen by default')!r} has no key {name.split('.', 1)[1]!r}"
                 if group in groups and "." in name else f"{name} is not a ganlab knob")
        raise InputError(f"{item}: {where}, so it would be trained with silently; `python -m ganlab.train --help` "
                         "lists the knobs (override one without '+').")


def _in_schema(conf_dir, name: str, group: str | None, chosen: dict) -> bool:
    """Whether `name` is a key of the config as its files define it: of train.yaml, or of the chosen
    option's file of its group (the default option's when the command chooses none)."""
    if group is None:
        return OmegaConf.select(OmegaConf.load(conf_dir / "train.yaml"), name, default=_MISSING) != _MISSING
    option = chosen.get(group)
    if option is None:
        defaults = OmegaConf.load(conf_dir / "train.yaml").get("defaults", [])
        option = next((str(item[group]) for item in defaults if OmegaConf.is_dict(item) and group in item), None)
    file = conf_dir / group / f"{option}.yaml"
    if not file.is_file():
        return False
    text = file.read_text()
    key = name if "@package _global_" in text.split("\n", 1)[0] else name.split(".", 1)[1]
    return OmegaConf.select(OmegaConf.create(text), key, default=_MISSING) != _MISSING


def unresolvable_hydra_value(arguments) -> str | None:
    """The one line for a `hydra.*` override whose value can never resolve (`hydra.run.dir=${oc.env:NOPE}`):
    Hydra resolves those itself before any job, where an error is a long traceback. A value that refers
    to other keys or to Hydra's own resolvers (`${now:...}`) is left to Hydra."""
    from omegaconf.errors import InterpolationKeyError, UnsupportedInterpolationType

    for item in arguments:
        key, _, value = str(item).partition("=")
        if not key.lstrip("+~").startswith("hydra.") or "${" not in value:
            continue
        try:
            OmegaConf.to_container(OmegaConf.create({"value": value}), resolve=True)
        except (InterpolationKeyError, UnsupportedInterpolationType):
            continue
        except OmegaConfBaseException as error:
            return f"{key.lstrip('+~')}: cannot be resolved ({type(error).__name__}: {str(error).splitlines()[0]})."
    return None


class RefusedConfig(InputError):
    """A refused key other than the tracking ones: `tracking` (checked) says where the job records its FAILED run."""

    def __init__(self, message: str, tracking: TrackingConfig):
        super().__init__(message)
        self.tracking = tracking


def typed_config(cfg: DictConfig, choices: Mapping) -> JobConfig:
    """The one pass: resolve every interpolation, check every key (the tracking keys first),
    and type the result. InputError for a bad tracking key, RefusedConfig for any other."""
    validate_tracking(cfg)
    tracking = TrackingConfig(**OmegaConf.to_container(cfg.tracking, resolve=True))
    try:  # an unresolvable value of another key is recorded in a FAILED run too
        resolve_all(cfg)
        _validate_job(cfg, choices)
    except InputError as error:
        raise RefusedConfig(str(error), tracking) from None
    return JobConfig.of(resolved(cfg))


def param_key(key: str) -> str:
    """The run param a command-line key is recorded under: a group chosen by name
    (`loss=hinge`) is recorded as `loss.name`; any other key as itself."""
    return f"{key}.name" if key in CHOICE_GROUPS else key


def resolved(cfg: DictConfig | JobConfig) -> dict:
    """The job's config with interpolations resolved, without Hydra's own section."""
    if isinstance(cfg, JobConfig):
        return cfg.as_dict()
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


def validate_tracking(cfg: DictConfig) -> None:
    """The keys needed to open the job's MLflow run."""
    resolve_all(cfg, ["tracking"])
    uri = _get(cfg, "tracking.uri")
    if uri is not None:
        scheme = uri.split("://", 1)[0].lower() if isinstance(uri, str) and "://" in uri else None
        if scheme == "file":
            raise InputError(f"tracking.uri: got {_show(uri)}; MLflow 3 no longer stores runs in a file: folder "
                             "(it refuses the model logging every job does); use null (the SQLite store in "
                             "./mlruns) or sqlite:////abs/path/mlflow.db.")
        if scheme not in TRACKING_SCHEMES:
            raise InputError(
                f"tracking.uri: got {_show(uri)}; expected null (the SQLite store in ./mlruns) or an MLflow "
                f"tracking URI such as http://127.0.0.1:5000 or sqlite:////abs/path/mlflow.db "
                f"(schemes: {', '.join(TRACKING_SCHEMES)})."
            )
    experiment = _get(cfg, "tracking.experiment")
    if not isinstance(experiment, str) or not EXPERIMENT_NAME.fullmatch(experiment) or ".." in experiment:
        raise InputError(
            f"tracking.experiment: got {_show(experiment)}; expected a name of letters, digits, '_', '-' and '.' "
            "(1 to 100 characters, starting with a letter or digit, no '..'), e.g. tracking.experiment=ganlab."
        )
    _optional_string(cfg, "tracking.register_model", "a Model Registry name")
    _boolean(cfg, "tracking.system_metrics")
    _boolean(cfg, "tracking.log_models")
    if _get(cfg, "tracking.register_model") is not None and not _get(cfg, "tracking.log_models"):
        raise InputError(f"tracking.register_model: got {_show(_get(cfg, 'tracking.register_model'))} with "
                         "tracking.log_models=false; registering needs the generator logged as an MLflow Model: "
                         "set tracking.log_models=true, or tracking.register_model=null.")


def validate(cfg: DictConfig, choices: Mapping | None = None) -> None:
    """Raise InputError for the first config value that is missing, mistyped or out of range.
    `choices`: {group: registry} to check each group's `name` against (None: not checked)."""
    resolve_all(cfg)
    validate_tracking(cfg)
    _validate_job(cfg, choices)


def _validate_job(cfg: DictConfig, choices: Mapping | None) -> None:
    """Every key but the tracking ones."""
    _integer(cfg, "seed", minimum=0, maximum=2**32 - 1)
    _integer(cfg, "epochs", minimum=0)
    _integer(cfg, "steps_per_epoch", minimum=1, nullable=True)
    _integer(cfg, "batch_size", minimum=1)
    _integer(cfg, "random_dim", minimum=1)
    _fraction(cfg, "dropout")
    _fraction(cfg, "label_smoothing", nullable=True)  # null: the chosen loss does not use it (ganlab.gan.losses)
    _choice(cfg, "dtype", DTYPES)
    ema = _get(cfg, "ema")
    if ema is not None and not (_is_number(ema) and 0.0 < ema < 1.0):
        raise InputError(f"ema: got {_show(ema)}; expected null or a decay in (0, 1), e.g. ema=0.999.")
    _boolean(cfg, "ema_warmup")
    _boolean(cfg, "deterministic")
    _integer(cfg, "threads", minimum=1, nullable=True)
    _optional_string(cfg, "resume", "an MLflow run id or a job's output folder")

    _validate_groups(cfg, choices or {})

    _boolean(cfg, "eval.enabled")
    _integer(cfg, "eval.every", minimum=1)
    _integer(cfg, "eval.num_samples", minimum=MIN_EVAL_SAMPLES)
    _integer(cfg, "eval.repeats", minimum=1, maximum=MAX_EVAL_REPEATS, optional=True)
    _optional_string(cfg, "eval.classifier", "a path to classifier weights (.weights.h5 with its .json beside it)")
    _choice(cfg, "checkpoint.keep", CHECKPOINT_KEEP)

    if _get(cfg, "data.download") not in (None, True, False, _MISSING):
        raise InputError(f"data.download: got {_show(_get(cfg, 'data.download'))}; expected null (try unless a download "
                         "failed on this machine in the last day), true (try now) or false (never download).")
    path = _get(cfg, "data.path")
    if path is not None and not (isinstance(path, str) and path.strip()):
        raise InputError(f"data.path: got {_show(path)}; expected null (Keras download/cache) or a path to a .npz or IDX folder.")
    _validate_objective(cfg)  # last: it reads the score registry


def _validate_groups(cfg: DictConfig, choices: Mapping) -> None:
    """Each group's `name` against its registry (ganlab.core.registry), then its settings by their kind."""
    for group, registry in choices.items():
        node = _get(cfg, group)
        if not OmegaConf.is_dict(node):
            raise InputError(f"{group}: got {_show(node)}; expected a config group, e.g. {group}={registry.names()[0]}.")
        registry.get(node.get("name"))
    for key in cfg.model:
        name = f"model.{key}"
        if key.endswith(("_units", "_filters")):
            units = _get(cfg, name)
            if not OmegaConf.is_list(units) or not units or not all(_is_int(u) and u >= 1 for u in units):
                raise InputError(f"{name}: got {_show(units)}; expected a non-empty list of positive integers, e.g. [256, 512, 1024].")
    _number(cfg, "model.leaky_relu_slope", minimum=0.0, optional=True)
    _number(cfg, "model.first_layer_init_stddev", minimum=0.0, exclusive=True, optional=True)
    _integer(cfg, "model.kernel_size", minimum=1, optional=True)
    for key in ("lr", "d_lr", "g_lr"):
        _number(cfg, f"optimizer.{key}", minimum=0.0, exclusive=True, optional=True)
    for key in ("beta_1", "beta_2"):
        _fraction(cfg, f"optimizer.{key}", optional=True)
    _integer(cfg, "loss.n_critic", minimum=1)
    _number(cfg, "loss.gp_weight", minimum=0.0, optional=True)


def _validate_objective(cfg: DictConfig) -> None:
    _choice(cfg, "objective_at", OBJECTIVE_AT)
    objective = _get(cfg, "objective")
    valid = list(scores.objective_names())
    if _get(cfg, "ema") is not None:
        valid += [scores.ema(name) for name in scores.SCORE_NAMES if scores.direction(name)]
    if objective is not None and objective not in valid:
        raise InputError(
            f"objective: got {_show(objective)}; valid: null or a metric with a direction: {', '.join(valid)}."
        )
    metric = scores.lookup(objective) if objective else None
    if metric is not None and metric.name in scores.SCORE_NAMES and not cfg.eval.enabled:
        raise InputError(
            f"objective: {objective} is an evaluation score, but eval.enabled is false; turn evaluation on, "
            f"or pick a training metric ({', '.join(n for n in scores.TRAINING_NAMES if scores.direction(n))}) or null."
        )


def validate_against_data(cfg: DictConfig, num_train_images: int) -> None:
    """Checks that need the loaded data."""
    check_batch_size(cfg.batch_size, num_train_images)


def steps_per_epoch(cfg: DictConfig, num_train_images: int) -> int:
    """`steps_per_epoch`, or when null the tutorial's round(N / batch_size) (469 on MNIST)."""
    return derived_steps(cfg.steps_per_epoch, cfg.batch_size, num_train_images)


def _get(cfg, key):
    return OmegaConf.select(cfg, key, default=_MISSING)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite real number: NaN and infinity are refused everywhere."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _integer(cfg, key, minimum, maximum=None, nullable=False, optional=False):
    value = _get(cfg, key)
    if (value is None and nullable) or (value == _MISSING and optional):
        return
    valid = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if nullable:
        valid += ", or null"
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise InputError(f"{key}: got {_show(value)}; expected {valid}.")


def _number(cfg, key, minimum, exclusive=False, optional=False):
    """`optional`: a key this config's choice does not have is fine; one it has must be valid."""
    value = _get(cfg, key)
    if value == _MISSING and optional:
        return
    below = _is_number(value) and (value <= minimum if exclusive else value < minimum)
    if not _is_number(value) or below:
        relation = ">" if exclusive else ">="
        raise InputError(f"{key}: got {_show(value)}; expected a finite number {relation} {minimum}.")


def _fraction(cfg, key, nullable=False, optional=False):
    value = _get(cfg, key)
    if (value is None and nullable) or (value == _MISSING and optional):
        return
    if not _is_number(value) or not 0.0 <= value < 1.0:
        also = " (or null)" if nullable else ""
        raise InputError(f"{key}: got {_show(value)}; expected a number in [0, 1){also}, e.g. {key}=0.1.")


def _optional_string(cfg, key, valid):
    value = _get(cfg, key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise InputError(f"{key}: got {_show(value)}; expected null or {valid}.")


def _boolean(cfg, key):
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise InputError(f"{key}: got {_show(value)}; expected true or false.")


def _choice(cfg, key, choices):
    value = _get(cfg, key)
    if value not in choices:
        shown = ", ".join("null" if choice is None else choice for choice in choices)
        raise InputError(f"{key}: got {_show(value)}; valid choices: {shown}.")

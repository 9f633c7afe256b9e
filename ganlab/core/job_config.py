"""The typed config a job reads: `JobConfig`, frozen, made once by `ganlab.core.config.typed_config`.

Each field is a key of conf/train.yaml (it says what each means); the groups with fixed
keys are small dataclasses of their own, and the groups chosen by name (`model`,
`optimizer`, `loss`) are a `Choice`: the name and that choice's settings. `source` keeps
the resolved config exactly as composed, for what records it (config.yaml, the run's
params, the checkpoint).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from ganlab.core.errors import InputError


@dataclass(frozen=True)
class Choice:
    """A group chosen by name (`model`, `optimizer`, `loss`): its name and its settings, read
    as attributes (`loss.n_critic`) or with `get`; lists become tuples."""

    name: str
    settings: Mapping = field(default_factory=dict)

    def __getattr__(self, key):
        try:
            return self.__dict__["settings"][key]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('name')!r} has no setting {key!r}") from None

    def get(self, key, default=None):
        return self.settings.get(key, default)

    @classmethod
    def of(cls, values: dict) -> "Choice":
        settings = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items() if key != "name"}
        return cls(values.get("name"), MappingProxyType(settings))


@dataclass(frozen=True)
class DataConfig:
    name: str
    path: str | None = None
    download: bool | None = None  # path null only: None = unless one failed lately; True = now; False = never


@dataclass(frozen=True)
class EvalConfig:
    enabled: bool
    every: int
    num_samples: int
    repeats: int = 1
    classifier: str | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    keep: str = "last"


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None
    experiment: str
    register_model: str | None = None
    system_metrics: bool = False
    log_models: bool = True


@dataclass(frozen=True)
class JobConfig:
    """What a job trains, scores and records, checked and typed (conf/train.yaml says what each key means)."""

    seed: int
    epochs: int
    steps_per_epoch: int | None
    batch_size: int
    random_dim: int
    dropout: float
    label_smoothing: float | None
    dtype: str
    ema: float | None
    ema_warmup: bool  # with ema: the half-life ramp (ganlab.gan.trainer)
    deterministic: bool
    threads: int | None
    objective: str | None
    objective_at: str
    resume: str | None
    model: Choice
    optimizer: Choice
    loss: Choice
    data: DataConfig
    eval: EvalConfig
    checkpoint: CheckpointConfig
    tracking: TrackingConfig
    source: Mapping = field(repr=False, compare=False)  # the resolved config as composed: its file, params, checkpoint

    @classmethod
    def of(cls, values: dict) -> "JobConfig":
        """The typed form of a resolved, checked config (`resolved(cfg)`)."""
        kinds = {"model": Choice, "optimizer": Choice, "loss": Choice, "data": DataConfig,
                 "eval": EvalConfig, "checkpoint": CheckpointConfig, "tracking": TrackingConfig}
        typed = {}
        for name in [item.name for item in fields(cls) if item.name != "source"]:
            if name not in values:  # e.g. the config of a checkpoint written before the key existed
                raise InputError(f"{name}: missing from the config; a job's config holds every key of conf/train.yaml.")
            kind = kinds.get(name)
            typed[name] = values[name] if kind is None else kind.of(values[name]) if kind is Choice else _group(kind, name, values[name])
        return cls(**typed, source=MappingProxyType(copy.deepcopy(values)))

    def steps_for(self, num_train_images: int) -> int:
        return derived_steps(self.steps_per_epoch, self.batch_size, num_train_images)

    def check_against_data(self, num_train_images: int) -> None:
        check_batch_size(self.batch_size, num_train_images)

    def as_dict(self) -> dict:
        """The resolved config as composed (what config.yaml, the run's params and the checkpoint hold)."""
        return copy.deepcopy(dict(self.source))


def _group(kind, group: str, values: dict):
    """A group with fixed keys, typed; a key it does not know, or one it lacks, is named."""
    known = {item.name for item in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{group}.{unknown[0]}: not a key of the {group} group; its keys: {', '.join(sorted(known))}.")
    try:
        return kind(**values)
    except TypeError:
        missing = sorted(item.name for item in fields(kind) if item.name not in values)
        raise InputError(f"{group}.{missing[0] if missing else '?'}: missing from the config.") from None


def derived_steps(steps_per_epoch: int | None, batch_size: int, num_train_images: int) -> int:
    """`steps_per_epoch`, or when null the tutorial's round(N / batch_size) (469 on MNIST)."""
    if steps_per_epoch is not None:
        return int(steps_per_epoch)
    return max(1, round(num_train_images / batch_size))


def check_batch_size(batch_size: int, num_train_images: int) -> None:
    """The check that needs the loaded data: a batch is drawn from the training set."""
    if batch_size > num_train_images:
        raise InputError(f"batch_size: got {batch_size}, but the training set holds only "
                         f"{num_train_images} images; valid: 1 to {num_train_images}.")

"""The score registry: every metric ganlab logs, with which way is better.

One home for each metric's name, direction, format and meaning. The evaluator, the
epoch record, config validation of `objective`, the sweep's best pick and tables, the
Optuna sweep's direction, `ganlab.report`, `ganlab.evaluate` and the README's table all
read it. Code refers to a metric through the constants below (`scores.FID`, ...), never
by its position in the registry; no other module spells an evaluation score's name
(tests/test_registry.py checks it), though the training loop's epoch record (`gan.py`)
still spells the training metrics' names.

Derived names follow fixed patterns and inherit their base metric's direction:
`ema_<score>` (the EMA generator's scores), `rescore_<score>` (a later re-scoring of a
finished run), `<metric>_best` and `<metric>_best_epoch` (the best value so far and the
epoch it came from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class Metric:
    name: str
    better: str | None  # LOWER, HIGHER, or None where neither is better (a spread, a probability)
    fmt: str  # format spec for tables
    meaning: str
    note: str = ""  # what the direction means in numbers, e.g. "max 10"

    @property
    def direction_text(self) -> str:
        text = self.better or "neither"
        return f"{text} ({self.note})" if self.note else text


# Every metric's name, once. Code names a metric through these, never by its position.
FID, FID_LOGITS, CLASSIFIER_SCORE = "fid", "fid_logits", "classifier_score"
KID, KID_STD = "kid", "kid_std"
PRECISION, RECALL, DENSITY, COVERAGE = "precision", "recall", "density", "coverage"
MODES_COVERED, KL_UNIFORM = "modes_covered", "kl_uniform"
MEMORIZATION, FID_CLASS_WORST = "memorization", "fid_class_worst"
FID_SAMPLING_STD = "fid_sampling_std"
D_REAL_TRAIN, D_REAL_TEST, D_GAP = "d_real_train", "d_real_test", "d_gap"
D_LOSS, G_LOSS, D_REAL, D_FAKE, STEPS_PER_SEC = "d_loss", "g_loss", "d_real", "d_fake", "steps_per_sec"

# Scores of generated samples, in the order an evaluation reports them.
EVALUATION = (
    Metric(FID, LOWER, ".4g", "Frechet distance between Gaussians fitted to real and generated classifier features: quality and diversity together"),
    Metric(FID_LOGITS, LOWER, ".4g", "the same on the 10 class logits: is the class mix and class confidence right"),
    Metric(CLASSIFIER_SCORE, HIGHER, ".4g", "exp E[KL(p(y|x) || p(y))], MNIST's Inception Score: confident and varied digits", "max 10"),
    Metric(KID, LOWER, ".4g", "Kernel Inception Distance: unbiased MMD^2 (cubic kernel) over 100 subsets of 1,000"),
    Metric(KID_STD, None, ".3g", "spread of kid across subsets; the error on kid is about kid_std / 10", "a spread"),
    Metric(PRECISION, HIGHER, ".3f", "share of generated samples inside the real data's k-NN manifold (k=3): realism", "max 1"),
    Metric(RECALL, HIGHER, ".3f", "share of real samples inside the generated manifold: diversity", "max 1"),
    Metric(DENSITY, None, ".3f", "how crowded real neighbourhoods are with generated samples (k=5); about 1 for real data", "~1 like real"),
    Metric(COVERAGE, HIGHER, ".3f", "share of real neighbourhoods holding at least one generated sample", "max 1"),
    Metric(MODES_COVERED, HIGHER, ".0f", "digit classes holding at least 1% of the samples", "max 10"),
    Metric(KL_UNIFORM, LOWER, ".3g", "KL divergence of the predicted class mix from uniform", "0 = balanced"),
    Metric(MEMORIZATION, LOWER, ".3f", "share of generated samples closer (classifier features) to their nearest training image "
           "than 99% of real test images are to theirs: copies of training images", "about 0.01 for unseen real digits"),
    Metric(FID_CLASS_WORST, LOWER, ".4g", "the largest per-class FID: each digit class (classifier labels) of generated against "
           "test images, inf when a class has too few generated images (a missing class is the worst); all ten "
           "classes in fid_per_class/epoch_NNN.csv"),
)
# Scores of an evaluated epoch besides the per-draw scores above: the spread over the
# eval.repeats sample draws (logged only when eval.repeats > 1) and the discriminator's
# overfitting, measured in inference mode on equal-sized train and test samples.
SAMPLING_STD_SUFFIX = "_sampling_std"
EPOCH_DIAGNOSTICS = (
    Metric(FID_SAMPLING_STD, None, ".3g", "standard deviation of fid over the eval.repeats sample draws (their mean is fid); "
           "logged with eval.repeats > 1", "a spread"),
    Metric(D_REAL_TRAIN, None, ".3f", "mean D output (inference mode) on training images: a probability with loss=ns, a raw score "
           "otherwise", "a probability (ns) or a score"),
    Metric(D_REAL_TEST, None, ".3f", "mean D output (inference mode) on as many held-out test images", "a probability (ns) or a score"),
    Metric(D_GAP, None, ".3g", "d_real_train - d_real_test: a growing gap means D memorizes its training images", "0 = no overfitting"),
)
# What every epoch of training logs.
TRAINING = (
    Metric(D_LOSS, LOWER, ".4g", "discriminator loss, epoch mean"),
    Metric(G_LOSS, LOWER, ".4g", "generator loss, epoch mean"),
    Metric(D_REAL, None, ".3f", "mean D output on real images: a probability with loss=ns, D's raw score with the other losses", "a probability (ns) or a score"),
    Metric(D_FAKE, None, ".3f", "mean D output on generated images: a probability with loss=ns, D's raw score with the other losses", "a probability (ns) or a score"),
    Metric(STEPS_PER_SEC, HIGHER, ".1f", "training speed of the epoch"),
)
REGISTRY = {metric.name: metric for metric in (*EVALUATION, *EPOCH_DIAGNOSTICS, *TRAINING)}
SCORE_NAMES = tuple(metric.name for metric in EVALUATION)
DIAGNOSTIC_NAMES = tuple(metric.name for metric in EPOCH_DIAGNOSTICS)
TRAINING_NAMES = tuple(metric.name for metric in TRAINING)

# The scores short summaries show (a job's closing lines, the report's default).
HEADLINE = (FID, CLASSIFIER_SCORE, PRECISION, RECALL, MODES_COVERED)

EMA_PREFIX = "ema_"
RESCORE_PREFIX = "rescore_"
BEST_SUFFIX = "_best"
BEST_EPOCH_SUFFIX = "_best_epoch"


def ema(name: str) -> str:
    return EMA_PREFIX + name


def rescore(name: str) -> str:
    return RESCORE_PREFIX + name


def sampling_std(name: str) -> str:
    """`<score>_sampling_std`: the spread of a score over the eval.repeats sample draws (registered for fid)."""
    return name + SAMPLING_STD_SUFFIX


def best(name: str) -> str:
    return name + BEST_SUFFIX


def best_epoch(name: str) -> str:
    return name + BEST_EPOCH_SUFFIX


SWEEP_BEST_PREFIX = "sweep.best."  # a sweep parent's own metrics: never a job's, never a known score (lookup: None)
INTERVAL_BOUNDS = ("ci_low", "ci_high")  # the ends of a 95% interval over seeds


def sweep_best(name: str, bound: str | None = None) -> str:
    """A sweep parent's metric: its best setting's `name` (`sweep.best.fid`: the mean over the setting's seeds,
    or its one job's value), or a bound of that mean's 95% interval (`sweep.best.fid.ci_low`, `.ci_high`)."""
    return SWEEP_BEST_PREFIX + name + (f".{bound}" if bound else "")


def lookup(name: str) -> Metric | None:
    """The registry entry for `name`, through the derived patterns; None if unknown."""
    for prefix in (EMA_PREFIX, RESCORE_PREFIX):
        if name.startswith(prefix):
            return lookup(name[len(prefix):])
    if name.endswith(BEST_EPOCH_SUFFIX):  # an epoch number: known, but no direction
        base = lookup(name[: -len(BEST_EPOCH_SUFFIX)])
        return Metric(name, None, ".0f", f"the epoch of {base.name}{BEST_SUFFIX}") if base else None
    if name.endswith(BEST_SUFFIX):
        return lookup(name[: -len(BEST_SUFFIX)])
    return REGISTRY.get(name)


def is_known(name: str) -> bool:
    return lookup(name) is not None


def direction(name: str) -> str | None:
    """LOWER, HIGHER or None for any known name; KeyError for an unknown one."""
    metric = lookup(name)
    if metric is None:
        raise KeyError(name)
    return metric.better


def objective_names() -> tuple[str, ...]:
    """Metrics a sweep can optimise: those with a direction."""
    return tuple(metric.name for metric in REGISTRY.values() if metric.better)


def comparable_direction(name: str) -> str:
    """LOWER or HIGHER for a metric that has a better direction; ValueError naming the metric
    for one that has none (a spread, a probability, an epoch number) or is unknown."""
    metric = lookup(name)
    if metric is None:
        raise ValueError(f"unknown metric {name!r}; valid: {_valid_names()}.")
    if metric.better is None:
        why = f" ({metric.note})" if metric.note else ""
        raise ValueError(f"metric {name!r} has no better direction{why}: neither a higher nor a lower value of it is "
                         f"better, so it cannot pick a best value; use one of: {', '.join(objective_names())}.")
    return metric.better


def is_better(name: str, candidate: float, incumbent: float | None) -> bool:
    """Is `candidate` strictly better than `incumbent` (None or NaN: anything finite is)?
    ValueError for a metric without a direction (see `comparable_direction`)."""
    better = comparable_direction(name)
    if candidate is None or math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    return candidate > incumbent if better == HIGHER else candidate < incumbent


def optuna_direction(name: str | None) -> str:
    """'minimize' or 'maximize': the Optuna study direction that optimises metric `name`.
    The sweeps read it through the `${ganlab.direction:${objective}}` resolver (`ganlab.sweeps.sweep`)."""
    if name is None:
        raise ValueError(f"objective is null, but a search optimises one; set objective to one of: "
                         f"{', '.join(objective_names())}.")
    return "maximize" if comparable_direction(name) == HIGHER else "minimize"


def pick_best(name: str, items, value):
    """The item whose `value(item)` is best for metric `name`; None if none has a number.
    `value` is called on each item and may itself depend on the item (which metric it returned)."""
    comparable_direction(name)  # a metric without a direction is refused even when no item has a value
    chosen, chosen_value = None, None
    for item in items:
        candidate = value(item)
        if candidate is not None and is_better(name, candidate, chosen_value):
            chosen, chosen_value = item, candidate
    return chosen


def format_value(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    metric = lookup(name)
    return format(value, metric.fmt if metric else ".4g")


def check_names(names, option: str) -> list[str]:
    """`names` if all are known metrics, else ValueError naming the unknown and the valid ones."""
    names = list(names)
    unknown = [name for name in names if not is_known(name)]
    if unknown:
        raise ValueError(f"{option}: unknown metric {', '.join(unknown)}; valid: {_valid_names()}.")
    return names


def _valid_names() -> str:
    return (f"{', '.join(REGISTRY)} (and the derived {EMA_PREFIX}<score>, {RESCORE_PREFIX}<score>, "
            f"<metric>{BEST_SUFFIX})")


def markdown_table() -> str:
    """The README's score table, generated from the registry."""
    from ganlab.core.markdown import table

    rows = [[f"`{metric.name}`", metric.meaning.replace("|", "\\|"),  # a bare | would end the table cell
             metric.direction_text] for metric in (*EVALUATION, *EPOCH_DIAGNOSTICS)]
    return table(["score", "what it measures", "better"], rows, padded=False)


def format_column(name: str, values) -> list[str]:
    """A table column of metric `name`: one number of decimals for all its values, as many as the
    registry's significant digits give its largest (`.4g`: 323.2 and 12.5; 1.001 and 1.000); a fixed
    format (`.3f`) as it is; "-" where a job has no value."""
    metric = lookup(name)
    spec = metric.fmt if metric else ".4g"
    finite = [abs(value) for value in values if value is not None and math.isfinite(value)]
    if not spec.endswith("g") or not finite:
        return [format_value(name, value) for value in values]
    digits = int(spec[1:-1] or 6)
    largest = max(finite)
    decimals = max(0, digits - 1 - math.floor(math.log10(largest))) if largest > 0 else digits - 1
    return ["-" if value is None or math.isnan(value) else f"{value:.{decimals}f}" for value in values]

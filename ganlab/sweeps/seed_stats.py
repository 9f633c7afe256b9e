"""Statistics of a few seeds: mean with its Student-t interval, Welch's difference, the seeds a test
needs, and a setting's variance split into training (between seeds) and sampling (within runs).

A GAN's scores move a lot from one seed to the next; these are the numbers that say whether
two sets of seeds differ beyond that noise. Pure NumPy/SciPy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def _stats():
    """scipy.stats, imported on first use: it takes seconds, and every job's process imports this module
    (through the sweep callback) while only a sweep's end uses it."""
    from scipy import stats

    return stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Difference:
    diff: float
    ci_low: float
    ci_high: float
    p_value: float


def summarize(values: Iterable[float]) -> Summary:
    """Mean, sample std (ddof=1) and the 95% Student-t interval of the mean (df = n - 1).
    With one value, or an infinite one (`fid_class_worst` of a class never drawn), the spread is
    unknown: std and the interval are NaN."""
    values = np.asarray(list(values), dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    std = sample_std(values)
    if math.isnan(std):
        return Summary(n, mean, math.nan, math.nan, math.nan)
    half_width = _stats().t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, float(mean - half_width), float(mean + half_width))


def sample_std(values) -> float:
    """The sample standard deviation (ddof=1); NaN for fewer than 2 values or an infinite one, whose
    spread is unknown. The settle design's pilot spread too (`ganlab.sweeps.settle`)."""
    values = np.asarray(values, float)
    return float(np.std(values, ddof=1)) if len(values) >= 2 and np.isfinite(values).all() else math.nan


def welch(a_values: Iterable[float], b_values: Iterable[float]) -> Difference:
    """mean(a) - mean(b), its 95% interval with the Welch–Satterthwaite df, and the p-value of
    Welch's t-test (scipy.stats.ttest_ind, equal_var=False).

    The interval and p-value are NaN when either group has fewer than 2 values, holds an infinite
    value, or both variances are zero (no noise estimate); the difference itself is NaN only if a
    group is empty (or both means are infinite).
    """
    a, b = np.asarray(list(a_values), dtype=float), np.asarray(list(b_values), dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # an infinite score (a class never drawn): no test
        with np.errstate(invalid="ignore"):
            diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
        return Difference(diff, math.nan, math.nan, math.nan)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, math.nan, math.nan, math.nan)
    var_a_of_mean, var_b_of_mean = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    standard_error = math.sqrt(var_a_of_mean + var_b_of_mean)
    if standard_error == 0:
        return Difference(diff, math.nan, math.nan, math.nan)
    df = (var_a_of_mean + var_b_of_mean) ** 2 / (
        var_a_of_mean**2 / (len(a) - 1) + var_b_of_mean**2 / (len(b) - 1)
    )
    stats = _stats()
    half_width = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * standard_error
    with warnings.catch_warnings():  # scipy's "Precision loss" on near-equal values: the numbers stand
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation")
        p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Difference(diff, float(diff - half_width), float(diff + half_width), p_value)


def seeds_needed(
    diff: float, std_a: float, std_b: float, alpha: float = 0.05, power: float = 0.8, max_seeds: int = 1000
) -> int | None:
    """Seeds per group for a two-sided two-sample t-test (equal n, pooled sd
    sqrt((std_a² + std_b²) / 2)) to detect `diff` with at least `power`: the smallest n >= 2,
    with the exact power from the noncentral t distribution.

    None when there is nothing to estimate (diff is 0 or NaN, an sd is NaN, or both sds are 0)
    and when even `max_seeds` per group would not reach `power`.
    """
    if diff is None or not math.isfinite(diff) or diff == 0:
        return None
    pooled_sd = math.sqrt((std_a**2 + std_b**2) / 2)
    if not math.isfinite(pooled_sd) or pooled_sd == 0:
        return None
    effect_size = abs(diff) / pooled_sd
    candidates = np.arange(2, max_seeds + 1)
    powers = _t_test_power(effect_size, candidates, alpha)
    reaching = np.flatnonzero(powers >= power)  # power grows with n, so the first is the answer
    return int(candidates[reaching[0]]) if len(reaching) else None


def _t_test_power(effect_size: float, n_per_group: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided two-sample t-test with n per group, for Cohen's d = `effect_size`."""
    df = 2 * n_per_group - 2
    noncentrality = effect_size * np.sqrt(n_per_group / 2)
    stats = _stats()
    critical = stats.t.ppf(1 - alpha / 2, df)
    with np.errstate(all="ignore"):  # nct warns on far tails that are simply ~0
        return stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)


@dataclass(frozen=True)
class VarianceSplit:
    """Where a setting's run-to-run variance of a score comes from (see `variance_split`)."""

    group: str
    metric: str
    runs: int
    repeats: int
    total: float  # variance of the runs' logged values (ddof=1); NaN with one run
    sampling: float  # the part sampling alone explains: mean(sampling_std^2) / repeats
    training: float  # the rest, between seeds: max(total - sampling, 0); NaN with one run
    dominant: str  # "training (between seeds)", "sampling (within runs)" or "unknown"


def variance_split(group: str, metric: str, values: Sequence[float], sampling_stds: Sequence[float],
                   repeats: int) -> VarianceSplit:
    """Split the variance of one setting's runs into a between-seed (training) and a within-run
    (sampling) part. Each run logs the mean of `repeats` draws and their standard deviation s;
    sampling alone makes a run's mean vary by s^2 / repeats, so of the runs' observed variance V,
    S = mean(s^2) / repeats is sampling and T = max(V - S, 0) is training (a method-of-moments
    split, as in a one-way random-effects model); the larger part dominates."""
    values = np.asarray(values, np.float64)
    stds = np.asarray(sampling_stds, np.float64)
    stds = stds[np.isfinite(stds)]
    sampling = float(np.mean(stds**2) / repeats) if stds.size else math.nan
    total = float(np.var(values, ddof=1)) if len(values) > 1 else math.nan
    training = max(total - sampling, 0.0) if not (math.isnan(total) or math.isnan(sampling)) else math.nan
    if math.isnan(training):
        dominant = "unknown"
    else:
        dominant = "training (between seeds)" if training > sampling else "sampling (within runs)"
    return VarianceSplit(group, metric, len(values), repeats, total, sampling, training, dominant)

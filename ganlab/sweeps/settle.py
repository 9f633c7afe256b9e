"""Settle a comparison with the fewest seeds: a two-stage design with a guaranteed interval width.

Every setting of a sweep is compared with a reference setting on one score at one epoch. A
seed's score is treated as normal with a mean and a variance of its own per setting (unequal
variances allowed). The design is Chapman's two-stage procedure for the difference of two
means (D. G. Chapman, "Some two sample tests", Ann. Math. Stat. 21:601-606, 1950), the
two-sample form of Stein's two-stage procedure (C. Stein, "A two-sample test for a linear
hypothesis whose power is independent of the variance", Ann. Math. Stat. 16:243-258, 1945):

1. Stage 1 (the pilot): `n0` seeds of every setting; `s` is the standard deviation of a
   setting's pilot scores.
2. From the pilot alone, a setting needs `n = max(n0, ceil((h * s / d)^2))` seeds, where
   `d = margin / 2` is the half-width the interval must not exceed and `h` solves
   `P(|T1 - T2| <= h) = 1 - alpha / k` for independent Student t's with `n0 - 1` degrees of
   freedom (k comparisons with the reference: Bonferroni, so all k intervals hold together
   with probability at least 1 - alpha). Stage 2 runs the missing seeds, at most `max_seeds`.
3. The interval of a difference of the settings' means (all their seeds) is
   `diff +- h * max(s_a / sqrt(n_a), s_r / sqrt(n_r))`, with the PILOT standard deviations.
   Given the pilot variances, `sqrt(n)(mean - mu) / s` is exactly Student t with `n0 - 1`
   degrees of freedom (Stein 1945), so `diff - delta = a T1 - b T2` with `a, b <= max(a, b)`;
   by Anderson's theorem (T. W. Anderson, Proc. AMS 6:170-176, 1955) the interval covers the
   true difference with probability at least 1 - alpha / k, whatever the variances. Without
   the cap its half-width is at most `d = margin / 2`.

Why `margin / 2`: an interval no wider than `margin` that holds 0 lies inside
`[-margin, margin]`, so every comparison that got its seeds ends with a verdict: **better** or
**worse** (the interval excludes 0; which way is better comes from the score registry),
**equivalent** (the interval lies inside `+-margin`), or, only when `max_seeds` cut a setting
short, **undecided**. (So is a comparison where a seed scored inf, e.g. `fid_class_worst` of a
generator that leaves a class out: there is no spread and no interval, and no seeds are planned.)
Every verdict is right (better/worse: the true difference has that sign; equivalent: it is
smaller than margin) whenever the intervals cover, so all of them together are right with
probability at least 1 - alpha.

The seeds a fixed one-stage design would have needed are given for scale: the smallest equal
number per setting whose Welch-style interval (t quantile at 1 - alpha / (2k), the variances
as all seeds estimate them, as if known in advance) has half-width at most `margin / 2`.

Pure numpy/scipy: the sweeper (`hydra_plugins/ganlab_sweepers/settle.py`) runs the stages;
tests/test_settle_design.py checks the guarantees by simulation.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ganlab.core.scores import HIGHER, LOWER  # noqa: F401  (which way a metric is better)
from ganlab.sweeps.seed_stats import sample_std  # a pilot's spread: NaN for fewer than 2 scores or an infinite one

BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
VERDICTS = (BETTER, WORSE, EQUIVALENT, UNDECIDED)


@functools.lru_cache(maxsize=64)
def critical_value(pilot_seeds: int, alpha: float, comparisons: int = 1) -> float:
    """h with P(|T1 - T2| <= h) = 1 - alpha / comparisons, T1 and T2 independent Student t
    with pilot_seeds - 1 degrees of freedom (Chapman 1950)."""
    from scipy import integrate, optimize, stats

    if pilot_seeds < 2:
        raise ValueError("a pilot needs at least 2 seeds to estimate a variance")
    level = 1.0 - alpha / comparisons
    t = stats.t(pilot_seeds - 1)
    if pilot_seeds == 2:  # Cauchy: T1 - T2 is Cauchy with scale 2
        return float(2.0 * math.tan(math.pi * level / 2.0))

    # P(|T1 - T2| <= h) = E[F(T + h) - F(T - h)], integrated over x = tan(u) on a fine grid (the tails vanish
    # as |x|^(1 - dof) there): vectorised, so the root is found in milliseconds.
    u = np.linspace(-np.pi / 2, np.pi / 2, 20_001)[1:-1]
    x = np.tan(u)
    weight = t.pdf(x) / np.cos(u) ** 2

    def covered(h: float) -> float:
        return float(integrate.simpson(weight * (t.cdf(x + h) - t.cdf(x - h)), x=u)) - level

    upper = 2.0 * float(t.ppf(1.0 - (1.0 - level) / 4.0)) + 1.0  # |T1 - T2| <= |T1| + |T2|
    return float(optimize.brentq(covered, 1e-9, upper, xtol=1e-10))


def seeds_needed(pilot_std, margin: float, h: float, pilot_seeds: int) -> np.ndarray:
    """Seeds per setting for a half-width of at most margin / 2 (uncapped): max(n0, ceil((h s / d)^2)).
    A NaN spread (a pilot with an infinite score, `sample_std`) asks for no more than the pilot: no
    number of seeds makes a mean holding inf finite."""
    d = margin / 2.0
    pilot_std = np.asarray(pilot_std, dtype=float)
    need = np.ceil((h * np.nan_to_num(pilot_std, nan=0.0) / d) ** 2 - 1e-9)
    return np.maximum(pilot_seeds, need).astype(int)


def seeds_planned(pilot_std, margin: float, h: float, pilot_seeds: int, max_seeds: int, available=0) -> np.ndarray:
    """Seeds each setting ends with: what it needs, at most max_seeds, and never fewer than it already has."""
    planned = np.minimum(seeds_needed(pilot_std, margin, h, pilot_seeds), max_seeds)
    return np.maximum(planned, np.asarray(available, dtype=int))


def half_width(h: float, std_a, n_a, std_r, n_r) -> np.ndarray:
    """The interval's half-width from the pilot standard deviations and the final seed counts."""
    return h * np.maximum(np.asarray(std_a, float) / np.sqrt(n_a), np.asarray(std_r, float) / np.sqrt(n_r))


def verdicts(low, high, margin: float, better: str) -> np.ndarray:
    """better / worse / equivalent / undecided per interval [low, high] of (setting - reference)."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    above, below = low > 0, high < 0
    lower_is_better = better == LOWER
    out = np.full(low.shape, UNDECIDED, dtype=object)
    out[(low >= -margin) & (high <= margin)] = EQUIVALENT
    out[above] = WORSE if lower_is_better else BETTER
    out[below] = BETTER if lower_is_better else WORSE
    out[~(np.isfinite(low) & np.isfinite(high))] = UNDECIDED
    return out


def consistent(verdict, true_diff, margin: float, better: str) -> np.ndarray:
    """Whether each verdict is true of the true difference (setting - reference); undecided claims nothing."""
    verdict, true_diff = np.asarray(verdict, dtype=object), np.asarray(true_diff, float)
    good_sign = -1.0 if better == LOWER else 1.0
    return np.select([verdict == BETTER, verdict == WORSE, verdict == EQUIVALENT],
                     [true_diff * good_sign > 0, true_diff * good_sign < 0, np.abs(true_diff) < margin], default=True)


def fixed_design_seeds(std_a, std_r, margin: float, alpha: float, comparisons: int = 1, max_n: int = 10_000) -> np.ndarray:
    """Seeds per setting a one-stage design with equal numbers would need, the variances known as `std_a`, `std_r`
    estimate them: the smallest n with t(1 - alpha / 2k, 2n - 2) sqrt((s_a^2 + s_r^2) / n) <= margin / 2."""
    from scipy import stats

    variance = np.asarray(std_a, float) ** 2 + np.asarray(std_r, float) ** 2
    n = np.arange(2, max_n + 1)
    quantile = stats.t.ppf(1.0 - alpha / (2.0 * comparisons), 2 * n - 2)
    widths = quantile[None, :] * np.sqrt(variance.reshape(-1, 1) / n[None, :])
    enough = widths <= margin / 2.0
    found = np.where(enough.any(axis=1), n[np.argmax(enough, axis=1)], max_n)
    return found.reshape(np.shape(variance)).astype(int)


def compare(values: dict, reference, margin: float, alpha: float, pilot_seeds: int, max_seeds: int,
            better: str) -> list[dict]:
    """The verdict of every setting against `reference`, from {setting: [scores in seed order]}.

    The first `pilot_seeds` scores of a setting are its pilot. Each row: setting, verdict, diff,
    low, high, half_width, seeds (setting's, reference's), seeds_needed (the design's, uncapped,
    both), fixed_seeds and the means."""
    others = [setting for setting in values if setting != reference]
    k = max(1, len(others))
    h = critical_value(pilot_seeds, alpha, k)
    pilot_std = {s: sample_std(v[:pilot_seeds]) for s, v in values.items()}
    ref = np.asarray(values[reference], float)
    rows = []
    for setting in others:
        own = np.asarray(values[setting], float)
        row = {"setting": setting, "mean": _mean(own), "reference_mean": _mean(ref), "seeds": len(own),
               "reference_seeds": len(ref),
               "seeds_needed": int(seeds_needed(pilot_std[setting], margin, h, pilot_seeds)) if len(own) >= 2 else None,
               "reference_seeds_needed": int(seeds_needed(pilot_std[reference], margin, h, pilot_seeds)) if len(ref) >= 2 else None}
        if len(own) < pilot_seeds or len(ref) < pilot_seeds:
            row.update(verdict=UNDECIDED, diff=math.nan, low=math.nan, high=math.nan, half_width=math.nan,
                       fixed_seeds=None, why="fewer scores than the pilot needs (a job failed)")
            rows.append(row)
            continue
        infinite = [name for name, seeds in (("the setting", own), ("the reference", ref))
                    if not np.isfinite(seeds).all()]
        if infinite:  # e.g. fid_class_worst of a generator that leaves a digit out: no spread, no interval
            with np.errstate(invalid="ignore"):
                diff = row["mean"] - row["reference_mean"]
            row.update(verdict=UNDECIDED, diff=diff, low=math.nan, high=math.nan, half_width=math.nan, fixed_seeds=None,
                       why=f"{' and '.join(infinite)} scored inf on a seed: no interval exists",
                       seeds_needed=None, reference_seeds_needed=None)
            rows.append(row)
            continue
        diff = row["mean"] - row["reference_mean"]
        width = float(half_width(h, pilot_std[setting], len(own), pilot_std[reference], len(ref)))
        verdict = str(verdicts(diff - width, diff + width, margin, better))
        capped = max(row["seeds_needed"], row["reference_seeds_needed"]) > max(len(own), len(ref)) or width > margin / 2
        row.update(verdict=verdict, diff=diff, low=diff - width, high=diff + width, half_width=width,
                   fixed_seeds=int(fixed_design_seeds(np.std(own, ddof=1), np.std(ref, ddof=1), margin, alpha, k)),
                   why="max_seeds reached" if verdict == UNDECIDED and capped else "")
        rows.append(row)
    return rows


def _mean(values) -> float:
    with np.errstate(over="ignore"):  # a mean holding inf is inf
        return float(np.mean(values)) if len(values) else math.nan

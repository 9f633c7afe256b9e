"""Does a setting change quality beyond seed noise? Groups of seeds compared with a reference group.

A GAN's scores move a lot from one seed to the next, so a sweep's table of means can show
differences that are only noise. Given one value per (group, seed, metric, epoch) (a
record's observations, `ganlab.core.record`), this module summarizes each group (mean, sample
std, 95% Student-t interval of the mean), compares it with a reference group (Welch's
difference of means with its 95% interval and p-value), and estimates how many seeds per
group a two-sample t-test would need to detect the observed difference with 80% power (the
statistics are `ganlab.sweeps.seed_stats`). It writes the result as CSV, Markdown, a PNG per
metric and one plain-English sentence per swept key (for a sweep's MLflow description).

**What decides a verdict.** A difference is called clear only when its Benjamini–Hochberg q
(Benjamini & Hochberg 1995, "Controlling the false discovery rate", JRSS B 57:289-300) is
below FALSE_DISCOVERY_RATE, the p-values adjusted over the groups compared with the reference
at the same metric and epoch. Every verdict (tables, sentences, the sweep's MLflow
description, the published studies) reads `is_clear`, so none can disagree with another; the
Welch intervals shown beside it are unadjusted, for the size of a difference.

**Replicates are seeds only.** A group's values must differ only by seed: when the
observations carry another key that varies inside a group (a dropout x label_smoothing grid
grouped by dropout alone), `compare` refuses (PooledKeys) rather than count different
settings as seed replicates; group by that key too.

The default reference is the group at the config's defaults (conf/, the tutorial's
setting; `ganlab.core.defaults`), never written here.

NumPy/SciPy/matplotlib: importing it loads none of TensorFlow, MLflow, Hydra or OmegaConf.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from ganlab.core.params import same_value  # noqa: E402 - one rule for equal params, None as MLflow stores it
from ganlab.core.plots import _save, epoch_ticks, numeric_first  # noqa: E402
from ganlab.core.markdown import table as markdown_table  # noqa: E402
from ganlab.core.record import Observation  # noqa: E402
from ganlab.sweeps.seed_stats import VarianceSplit, seeds_needed, summarize, welch  # noqa: E402

FALSE_DISCOVERY_RATE = 0.05  # a difference is clear when its Benjamini–Hochberg q is below this


class PooledKeys(ValueError):
    """Observations of one group differ in a key other than the grouping keys and the seed."""


@dataclass(frozen=True)
class ComparisonRow:
    """One group at one metric and epoch; the diff fields are None where there is nothing to compare."""

    group: str
    metric: str
    epoch: int
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    diff: float | None
    diff_ci_low: float | None
    diff_ci_high: float | None
    p_value: float | None
    seeds_needed: int | None
    q_value: float | None = None  # p_value adjusted by Benjamini–Hochberg within (metric, epoch): what decides


CSV_HEADER = [field.name for field in fields(ComparisonRow)]


def group_label(group: dict[str, str], by: Sequence[str] | None = None) -> str:
    """`key=value` pairs joined by spaces, keys in the order of `by` (then any others as given)."""
    keys = list(group)
    if by:
        keys = [key for key in by if key in group] + [key for key in keys if key not in by]
    return " ".join(f"{key}={group[key]}" for key in keys) or "all runs"


def default_reference(groups: Iterable[dict[str, str]], by: Sequence[str],
                      setting: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The group at `setting`'s values of the grouping keys, when every grouping key has a value
    there and that group exists (values match numerically). `setting` defaults to the config's
    defaults (`ganlab.core.defaults`): the tutorial's dropout, label smoothing, optimizer, ..."""
    if setting is None:
        from ganlab.core.defaults import config_defaults  # reads conf/ with OmegaConf: only when asked

        setting = config_defaults()
    if not by or any(key not in setting for key in by):
        return None
    wanted = {key: str(setting[key]) for key in by}
    return next((dict(group) for group in groups if _matches(group, wanted, by)), None)


def compare(
    observations: Iterable[Observation],
    by: Sequence[str],
    reference: dict[str, str] | None = None,
    metrics: Sequence[str] | None = None,
    epochs: Sequence[int] | None = None,
) -> list[ComparisonRow]:
    """One row per (group, metric, epoch) that has values; groups are the distinct values of
    the keys in `by`, and a group's replicates are its seeds. Other keys the observations carry
    may differ between groups (loss.n_critic with loss.name) but never inside one: that would
    count other settings as seeds, so it raises PooledKeys naming the key (group by it too).
    If one seed has several values at one metric and epoch, the last one counts. Diff fields
    compare each group with `reference` at the same metric and epoch; they are None for the
    reference itself, when no reference is given, and where the reference has no values;
    `q_value` is `p_value` adjusted by Benjamini–Hochberg (`false_discovery_q`).

    Sorted by metric (as given, else first seen), epoch, then group (reference first).
    Raises ValueError if `reference` matches no group.
    """
    observations = list(observations)
    groups: dict[tuple, dict[str, str]] = {}
    # (group key, metric, epoch) -> {replicate: value}
    values: dict[tuple, dict[str, float]] = {}
    seen_metrics: list[str] = []
    for observation in observations:
        key = tuple(observation.group.get(name) for name in by)
        groups.setdefault(key, {name: observation.group.get(name) for name in by})
        replicate = (observation.seed, tuple(sorted((name, value) for name, value in observation.group.items()
                                                    if name not in by)))
        values.setdefault((key, observation.metric, int(observation.epoch)), {})[replicate] = observation.value
        if observation.metric not in seen_metrics:
            seen_metrics.append(observation.metric)
    _refuse_pooling(observations, by)

    reference_key = None
    if reference is not None:
        reference_key = next((key for key, group in groups.items() if _matches(group, reference, by)), None)
        if reference_key is None:
            existing = ", ".join(group_label(group, by) for group in groups.values()) or "none"
            raise ValueError(f"reference {group_label(reference, by)!r} matches no group "
                             f"(grouped by {', '.join(by) or 'nothing'}); the groups are: {existing}")

    ordered_groups = sorted(groups, key=lambda key: (key != reference_key, [numeric_first(value) for value in key]))
    rows = []
    for metric in metrics if metrics is not None else seen_metrics:
        metric_epochs = sorted({epoch for (_, name, epoch) in values if name == metric})
        for epoch in metric_epochs if epochs is None else sorted(epochs):
            reference_values = list(values.get((reference_key, metric, epoch), {}).values())
            for key in ordered_groups:
                group_values = list(values.get((key, metric, epoch), {}).values())
                if not group_values:
                    continue
                summary = summarize(group_values)
                diff_fields = (None, None, None, None, None)
                if reference_key is not None and key != reference_key and reference_values:
                    difference = welch(group_values, reference_values)
                    needed = seeds_needed(difference.diff, summary.std, summarize(reference_values).std)
                    diff_fields = (*astuple(difference), needed)
                rows.append(ComparisonRow(group_label(groups[key], by), metric, epoch, *astuple(summary), *diff_fields))
    return [replace(row, q_value=q_value) for row, q_value in zip(rows, false_discovery_q(rows))]


def _refuse_pooling(observations: Sequence[Observation], by: Sequence[str]) -> None:
    """PooledKeys when a key outside `by` takes several values inside one group of `by`."""
    seen: dict[tuple, dict[str, set]] = {}
    for observation in observations:
        key = tuple(observation.group.get(name) for name in by)
        for name, value in observation.group.items():
            if name not in by:
                seen.setdefault(key, {}).setdefault(name, set()).add(value)
    for key, values in seen.items():
        for name, found in values.items():
            if len(found) > 1:
                shown = ", ".join(sorted((str(value) for value in found), key=numeric_first))
                where = group_label(dict(zip(by, key)), by)
                raise PooledKeys(
                    f"the group {where} holds runs at {len(found)} values of {name} ({shown}); its runs would "
                    f"count other settings as seed replicates. Group by {name} too "
                    f"({', '.join([*by, name])}), or compare runs that share one value of it.")


def is_clear(row: ComparisonRow) -> bool:
    """The one verdict: the difference from the reference holds at the false discovery rate
    FALSE_DISCOVERY_RATE (Benjamini & Hochberg 1995): its q is below it."""
    return row.q_value is not None and not math.isnan(row.q_value) and row.q_value < FALSE_DISCOVERY_RATE


def write_csv(rows: Iterable[ComparisonRow], path: str | Path) -> Path:
    """The rows as CSV: empty cells for None, floats at full (repr) precision, NaN as `nan`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_HEADER)
        for row in rows:
            writer.writerow(["" if cell is None else repr(float(cell)) if isinstance(cell, float) else cell
                             for cell in astuple(row)])
    return path


LEGEND = (
    "Each row is one group of runs (the same settings, different seeds) at one epoch. "
    "**n** is the number of runs: its seeds, and when the groups leave out some swept keys, "
    "each seed at each of their values; **mean ± 95% CI** is the mean over those runs and the "
    "half-width of the 95% confidence interval of that mean (Student t; none with a single seed). "
    "**diff [95% CI]** is the group's mean minus the reference group's mean at the same epoch, "
    "with its 95% interval from Welch's t-test (which does not assume equal spreads; the interval "
    "is not adjusted for the number of comparisons); **p** is that test's p-value. **q** is the "
    "p-value adjusted for the number of groups compared at that metric and epoch (Benjamini & "
    "Hochberg 1995): among many comparisons some intervals exclude 0 by chance alone. **q decides**: "
    "a difference is **clear** when q < 0.05, so that the clear differences hold at a 5% false "
    "discovery rate; otherwise the data cannot tell it apart from seed noise (also where the "
    "unadjusted interval alone excludes 0, marked \"p < 0.05 alone\"). **seeds needed** is how many "
    "seeds per group a t-test would need to detect a difference this size 80% of the time, given "
    "the observed spreads (empty if it cannot be estimated or would exceed 1000). The runs of a "
    "group differ only in their seed: other swept keys are grouped, never pooled."
)


def write_markdown(
    rows: Sequence[ComparisonRow], path: str | Path, metric_directions: dict[str, str] | None = None
) -> Path:
    """A legend, then one table per metric; clear differences get better/worse where
    `metric_directions` says whether lower or higher is better for that metric."""
    metric_directions = metric_directions or {}
    lines = [LEGEND, ""]
    for metric in _in_order(row.metric for row in rows):
        direction = _better(metric_directions.get(metric))
        metric_rows = [row for row in rows if row.metric == metric]
        reference = _reference_label(metric_rows)
        title = f"## {metric}" + (f" ({direction} is better)" if direction else "")
        lines += [title, "", f"Reference: {reference}." if reference else "No reference group.", ""]
        body = []
        for row in metric_rows:
            spread = " ± n/a" if math.isnan(row.ci_high) else f" ± {_number((row.ci_high - row.ci_low) / 2)}"
            cells = [row.group, str(row.epoch), str(row.n), f"{_number(row.mean)}{spread}"]
            if row.diff is None:
                cells += ["reference" if row.group == reference else "–", "", "", "", ""]
            else:
                interval = "" if math.isnan(row.diff_ci_low) else f" [{_number(row.diff_ci_low)}, {_number(row.diff_ci_high)}]"
                cells += [f"{_signed(row.diff)}{interval}", _p(row.p_value), _p(row.q_value),
                          "" if row.seeds_needed is None else str(row.seeds_needed), _verdict(row, direction, bold=True)]
            body.append(cells)
        lines += [markdown_table(["group", "epoch", "n", "mean ± 95% CI", "diff [95% CI]", "p", "q", "seeds needed",
                                  "difference (q < 0.05)"], body, padded=False), ""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def false_discovery_q(rows: Sequence[ComparisonRow]) -> list[float | None]:
    """Each row's p-value adjusted by Benjamini–Hochberg (scipy.stats.false_discovery_control)
    within its metric and epoch, the family of groups compared with the reference there;
    None where the row has no p-value."""
    q_values: list[float | None] = [None] * len(rows)
    families: dict[tuple[str, int], list[int]] = {}
    for index, row in enumerate(rows):
        if row.p_value is not None and not math.isnan(row.p_value):
            families.setdefault((row.metric, row.epoch), []).append(index)
    for indices in families.values():
        adjusted = stats.false_discovery_control([rows[index].p_value for index in indices], method="bh")
        for index, q_value in zip(indices, np.atleast_1d(adjusted)):
            q_values[index] = float(q_value)
    return q_values


def plot_metric(rows: Sequence[ComparisonRow], metric: str, path: str | Path) -> Path:
    """Mean of `metric` against epoch per group, the 95% CI of the mean as a shaded band where
    there is one (a group of one seed has none, and the title then promises none); whole-epoch
    ticks; the reference group is drawn first."""
    metric_rows = [row for row in rows if row.metric == metric]
    if not metric_rows:
        raise ValueError(f"no rows for metric {metric!r}; the rows have: {', '.join(_in_order(r.metric for r in rows))}")
    labels = _in_order(row.group for row in metric_rows)
    reference = _reference_label(metric_rows)
    if reference in labels:
        labels.remove(reference)
        labels.insert(0, reference)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in labels:
        group_rows = sorted((row for row in metric_rows if row.group == label), key=lambda row: row.epoch)
        epochs = [row.epoch for row in group_rows]
        line, = ax.plot(epochs, [row.mean for row in group_rows], "o-", markersize=3,
                        label=label + (" (reference)" if label == reference else ""))
        ax.fill_between(epochs, [row.ci_low for row in group_rows], [row.ci_high for row in group_rows],
                        color=line.get_color(), alpha=0.2, linewidth=0)  # NaN (one seed): no band drawn
    banded = any(not math.isnan(row.ci_high) for row in metric_rows)
    ax.set_xlabel("epoch")
    epoch_ticks(ax, [row.epoch for row in metric_rows])
    ax.ticklabel_format(axis="y", useOffset=False)  # 323.74, not 0.04 + 3.237e2
    if banded:
        ax.set_ylabel(f"{metric} (mean over seeds)")
        ax.set_title(f"{metric}: mean and 95% CI of the mean over seeds"
                     + ("" if all(row.n > 1 for row in metric_rows) else " (none for a group of one seed)"))
    else:
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: one seed per group, so no confidence interval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def sentence(rows: Sequence[ComparisonRow], key: str, metric: str, epoch: int, direction: str | None = None) -> str:
    """What the data show for swept `key` at `epoch` for `metric`, in one sentence: each group
    that differs from the reference only in `key`, clearly different or not."""
    block = [row for row in rows if row.metric == metric and row.epoch == epoch]
    if not block:
        return f"{key}: no {metric} values at epoch {epoch}."
    reference = _reference_label(block)
    if reference is None:
        return f"{key}: at epoch {epoch}, no reference group has {metric} values to compare against."
    reference_pairs = _pairs(reference)
    compared = [row for row in block if row.diff is not None and _differs_only_in(_pairs(row.group), reference_pairs, key)]
    if not compared:
        return f"{key}: at epoch {epoch}, no group other than the reference {reference} has {metric} values."
    better = _better(direction)
    clauses = []
    for index, row in enumerate(compared):
        pairs = _pairs(row.group)
        name = f"{key}={pairs[key]}" if key in pairs else row.group
        numbers = _sentence_numbers(row, first=index == 0)
        verdict = _verdict(row, better, bold=False)
        if index > 0:
            clauses.append(f"{name}: {verdict} ({numbers})")
        elif is_clear(row):
            clauses.append(f"at epoch {epoch}, {metric} is {verdict} with {name} than the reference {reference} ({numbers})")
        elif _has_interval(row):
            clauses.append(f"at epoch {epoch}, {metric} shows {verdict} between {name} and the reference {reference} ({numbers})")
        else:
            clauses.append(f"at epoch {epoch}, {metric} cannot be compared between {name} and the reference {reference}: "
                           f"{verdict} ({numbers})")
    return f"{key}: " + "; ".join(clauses) + "."


def _has_interval(row: ComparisonRow) -> bool:
    return row.diff_ci_low is not None and not math.isnan(row.diff_ci_low)


def _verdict(row: ComparisonRow, better: str | None, bold: bool) -> str:
    if not _has_interval(row):
        if math.isinf(row.mean) or (row.diff is not None and not math.isfinite(row.diff)):  # seed_stats: inf, no test
            return "a seed scored inf: no interval"
        return "too few seeds (or no spread) for an interval"
    if not is_clear(row):
        if row.diff_ci_low > 0 or row.diff_ci_high < 0:
            return "no clear difference (p < 0.05 alone)"
        return "no clear difference"
    side = "higher" if row.diff > 0 else "lower"
    quality = f" ({'better' if side == better else 'worse'})" if better else ""
    return f"**clear**: {side}{quality}" if bold else f"clearly {side}{quality}"


def _sentence_numbers(row: ComparisonRow, first: bool) -> str:
    text = _signed(row.diff)
    if not math.isnan(row.diff_ci_low):
        text += f", {'95% CI' if first else 'CI'} {_number(row.diff_ci_low)} to {_number(row.diff_ci_high)}"
    if not math.isnan(row.p_value):
        text += ", p" + ("" if _p(row.p_value).startswith("<") else "=") + _p(row.p_value)
    if row.q_value is not None and not math.isnan(row.q_value):
        text += ", q" + ("" if _p(row.q_value).startswith("<") else "=") + _p(row.q_value)
    return text


def _reference_label(rows: Sequence[ComparisonRow]) -> str | None:
    """The reference group: at an epoch where some rows have a diff, the one row without."""
    for epoch in _in_order(row.epoch for row in rows):
        block = [row for row in rows if row.epoch == epoch]
        if any(row.diff is not None for row in block):
            return next((row.group for row in block if row.diff is None), None)
    return None


def _better(direction: str | None) -> str | None:
    """'lower' or 'higher' from a direction such as 'lower' or 'higher (max 10)'; else None."""
    direction = (direction or "").strip().lower()
    return next((side for side in ("lower", "higher") if direction.startswith(side)), None)


def _pairs(label: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in label.split(" ") if "=" in part)


def _differs_only_in(pairs: dict[str, str], reference_pairs: dict[str, str], key: str) -> bool:
    if set(pairs) != set(reference_pairs):
        return True  # a label we cannot take apart: keep it rather than hide it
    return all(same_value(pairs[name], reference_pairs[name]) for name in pairs if name != key)


def _matches(group: dict[str, str], wanted: dict[str, str], by: Sequence[str]) -> bool:
    if set(wanted) != set(by):
        return False
    return all(same_value(group.get(key), wanted[key]) for key in by)


def _in_order(items: Iterable) -> list:
    """Distinct items in first-seen order."""
    return list(dict.fromkeys(items))


def _number(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4g}"


def _signed(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:+.4g}"


def _p(p_value: float | None) -> str:
    if p_value is None or math.isnan(p_value):
        return ""
    return "<0.001" if p_value < 0.001 else f"{p_value:.2g}"


# ---------------------------------------------------------------------------- variance split


VARIANCE_HEADER = [field.name for field in fields(VarianceSplit)]  # variance_split.csv


def variance_markdown(splits: Sequence[VarianceSplit]) -> str:
    """A section for comparison.md: the split per setting and a sentence on what dominates."""
    lines = ["## Training or sampling variance?", "",
             "Each run's score is the mean of `eval.repeats` sample draws. Of the variance between a setting's runs, "
             "mean(sampling_std²) / repeats is what sampling alone explains; the rest is between-seed (training) "
             "variance.", "",
             markdown_table(["group", "metric", "runs", "repeats", "variance between runs", "sampling part", "training part", "dominates"],
                            [[split.group, split.metric, split.runs, split.repeats, _number(split.total),
                              _number(split.sampling), _number(split.training), split.dominant] for split in splits],
                            padded=False)]
    known = [split for split in splits if split.dominant != "unknown"]
    if known:
        training = sum(split.dominant.startswith("training") for split in known)
        lines += ["", f"Training (between-seed) variance dominates in {training} of {len(known)} settings, "
                      f"sampling variance in {len(known) - training}"
                      + (": more seeds, not more samples, narrow the intervals." if training * 2 > len(known)
                         else ": more samples or repeats per evaluation narrow the intervals.")]
    return "\n".join(lines) + "\n"

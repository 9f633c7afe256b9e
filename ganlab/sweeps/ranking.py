"""A sweep's jobs in order: one row per job, the ranking best first and the best job.

The best job is the one that returned the best value of the objective to the sweeper (its
final value, or its best evaluated one for objective_at=best: `returned_metric`), in the
score registry's direction. `SweepSummary` carries what the summary found to the pictures
(`ganlab.sweeps.pictures`) and the parent's description (`ganlab.sweeps.parent`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ganlab.core import scores
from ganlab.core.config import OBJECTIVE_AT_BEST
from ganlab.tracking import store as tracking
from ganlab.tracking.job_run import FAILURE_TAG

SUMMARY_DIR = "summary"  # the sweep summary's folder: in the sweep folder and among the parent run's artifacts
SUMMARY_TABLE = "sweep_summary.md"  # in it: every job's row, best first

BEST_MARK = "★"  # marks the best job: its row in the parent's description, its line in the curves' legend
OBJECTIVE_AT_KEY = "objective_at"  # a job's param: which value of the objective it returned (final or best)


@dataclass
class SweepSummary:
    files: list[Path] = field(default_factory=list)
    best: object | None = None  # the best finished child for the objective
    best_metric: str | None = None  # the metric the best child returned to the sweeper: the objective or <objective>_best
    keys: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    description: str = ""  # Markdown for the parent's mlflow.note.content
    not_finished: list[str] = field(default_factory=list)  # one line per job that did not finish
    jobs: int = 0  # the sweep's jobs: its children and the jobs that failed before their run existed
    ranked: list = field(default_factory=list)  # the children best first (see `ranked`)
    rank_metric: str | None = None  # the objective they are ranked on (fid when the sweep had none)
    objective_at: str | None = None
    grids: dict[str, dict[int, str]] = field(default_factory=dict)  # run id -> {epoch: its samples image artifact}
    montage: Path | None = None  # the final montage written by summarize (sweep_samples.png)
    histories: dict[str, dict[int, float]] = field(default_factory=dict)  # run id -> {epoch: rank_metric}, fetched once
    parent_id: str | None = None  # the parent run of the children (their mlflow.parentRunId tag)
    experiment_id: str | None = None

def job_rows(children, keys) -> list[dict]:
    """One row per child: job number, swept values, status, final metrics, run id."""
    rows = []
    for child in children:
        row = {"job": child.data.tags.get(tracking.JOB_NUM_TAG, ""), "run_id": child.info.run_id, "status": child.info.status}
        row.update({key: child.data.params.get(key, "") for key in keys})
        row.update({name: value for name, value in child.data.metrics.items() if scores.is_known(name)})
        rows.append(row)
    return rows

def metric_columns(rows) -> list[str]:
    """The metrics any job logged, in registry order, derived names after their base."""
    logged = {name for row in rows for name in row if scores.is_known(name)}
    ordered = [name for name in (*scores.SCORE_NAMES, *scores.DIAGNOSTIC_NAMES, *scores.TRAINING_NAMES) if name in logged]
    return ordered + sorted(logged - set(ordered))

def not_finished(children, runless_jobs: dict[str, tuple[str, str]]) -> list[str]:
    """One line per job that did not finish: its number, overrides and why."""
    lines = [f"job {child.data.tags.get(tracking.JOB_NUM_TAG)} ({child.data.tags.get(tracking.OVERRIDES_TAG, '')}): "
             f"{child.data.tags.get(FAILURE_TAG, child.info.status)}"
             for child in children if child.info.status != "FINISHED"]
    lines += [f"job {job} ({overrides}): {why}" for job, (overrides, why) in runless_jobs.items()]
    return lines

def returned_metric(child, objective: str, objective_at: str | None = None) -> str:
    """The metric whose value `child` returned to the sweeper for `objective`, as `ganlab.training.epochs` chose it:
    `<objective>_best` for a job run with objective_at=best (its own param; `objective_at` is the sweep's,
    for a job that lacks the param), unless the job logged none (epochs=0: it returned the final value)."""
    at = child.data.params.get(OBJECTIVE_AT_KEY, objective_at)
    if at == OBJECTIVE_AT_BEST and scores.best(objective) in child.data.metrics:
        return scores.best(objective)
    return objective

def best_job(children, objective: str, objective_at: str | None = None):
    """The child that returned the best value of `objective` (in the registry's direction): its best
    evaluated value for objective_at=best, its final value otherwise. None if no child has a value."""
    return scores.pick_best(objective, children,
                            lambda child: child.data.metrics.get(returned_metric(child, objective, objective_at)))

def ranked(children, metric: str | None, objective_at: str | None = None) -> list:
    """The children best first on the value each returned for `metric` (`returned_metric`): finished jobs
    before the others, jobs without a value last, ties in job order. As given when `metric` is None."""
    if metric is None:
        return list(children)
    lower = scores.comparable_direction(metric) == scores.LOWER

    def order(child):
        value = child.data.metrics.get(returned_metric(child, metric, objective_at))
        missing = value is None or math.isnan(value)
        return child.info.status != "FINISHED", missing, 0.0 if missing else (value if lower else -value)

    return sorted(children, key=order)

@dataclass(frozen=True)
class BestSetting:
    """The best job's setting and its returned `metric` over the setting's seeds: the mean and its 95% Student t
    interval (`seed_stats.summarize`) for several, the one job's value (and no interval) for one."""

    label: str
    metric: str
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None


def best_setting(summary: SweepSummary) -> BestSetting | None:
    """The best job's setting (its swept values but the seed) and its metric over the finished jobs of that
    setting; None without a best job."""
    from ganlab.core.config import SEED_KEY
    from ganlab.sweeps import seed_stats

    best, metric = summary.best, summary.best_metric
    if best is None or not metric or metric not in best.data.metrics:
        return None
    keys = [key for key in summary.keys if key != SEED_KEY]
    values = [child.data.metrics[metric] for child in summary.ranked if child.info.status == "FINISHED"
              and metric in child.data.metrics and all(child.data.params.get(k) == best.data.params.get(k) for k in keys)]
    label = tracking.setting(best.data.params, keys) or "the default setting"
    found = seed_stats.summarize(values)
    if found.n > 1:
        return BestSetting(label, metric, found.mean, found.n, found.ci_low, found.ci_high)
    return BestSetting(label, metric, best.data.metrics[metric], 1)


def label_of(summary: SweepSummary, child) -> str:
    return tracking.setting(child.data.params, summary.keys) or f"job {child.data.tags.get(tracking.JOB_NUM_TAG, '?')}"

def varying_params(children) -> list[str]:
    """Params whose values differ between the jobs (when the swept keys are not known)."""
    values: dict[str, set] = {}
    for child in children:
        for key, value in child.data.params.items():
            values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1)

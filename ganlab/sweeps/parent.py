"""What a sweep's parent run shows: its description, the best setting's metrics and the runs view of its children.

The parent's metrics are its best setting's value of the objective and, over seeds, its 95%
interval, under names no job logs (`scores.sweep_best`: `sweep.best.fid`, `...ci_low`,
`...ci_high`), so the parent never sorts among its children as if it were one; its params
(`sweep.swept.*`, `sweep.fixed.*`) are logged when the sweep starts (`ganlab.sweeps.sweep`);
the best job's own values are `best.` tags. Its description
(Markdown, the UI's first view) names the best setting above a table of every job best
first, each linked to its run; the runs view is an experiment tag the printed URL names.
"""

from __future__ import annotations

import json
import math

from ganlab.core import scores
from ganlab.core.markdown import cut, table as markdown_table
from ganlab.sweeps.pictures import log_epoch_montages
from ganlab.sweeps.ranking import BEST_MARK, SUMMARY_DIR, SUMMARY_TABLE, SweepSummary, best_setting, label_of
from ganlab.tracking import store as tracking

VIEW_KEY_PREFIX = "sweep-"  # a sweep's runs-table view: tracking.SHARED_VIEW_TAG + VIEW_KEY_PREFIX + <parent run id>
UI_GAP = "&nbsp;&nbsp;"  # space between a description table's columns: the UI trims spaces, not this


def log_on_parent(client, run_id: str, summary: SweepSummary, objective: str | None) -> str | None:
    """What the parent run shows of its sweep: the description; tags `best.run_id`, `best.overrides` and
    `best.<metric>` (the value the best job was chosen on: `best.fid`, or `best.fid_best` for objective_at=best);
    the metrics `sweep.best.<metric>` and, over several seeds, its interval's bounds (`best_metrics`); an image `samples` per epoch (`log_epoch_montages`); and the runs-table
    view of its children, best first. Returns that view's key (`tracking.view_link`), None without one."""
    from mlflow.entities import RunTag

    key = log_runs_view(client, summary) if summary.parent_id == run_id else None  # its children: their view
    best = summary.best
    tags = [RunTag(tracking.NOTE_TAG, cut(summary.description, tracking.NOTE_LIMIT, f"{SUMMARY_DIR}/{SUMMARY_TABLE}"))]
    if best is not None:
        chosen_on = summary.best_metric or objective
        tags += [RunTag("best.run_id", best.info.run_id), RunTag(f"best.{chosen_on}", str(best.data.metrics[chosen_on])),
                 RunTag("best.overrides", best.data.tags.get(tracking.OVERRIDES_TAG, ""))]
    client.log_batch(run_id, tags=tags, metrics=best_metrics(summary))
    log_epoch_montages(client, run_id, summary)
    return key


def best_metrics(summary: SweepSummary) -> list:
    """The parent's own metrics (step 0): its best setting's returned score (`sweep.best.fid`: the mean over
    its seeds, or its one job's value) and, over several seeds, that mean's 95% interval bounds."""
    import time

    from mlflow.entities import Metric

    found = best_setting(summary)
    if found is None:
        return []
    values = {scores.sweep_best(found.metric): found.value}
    if found.n > 1:
        values.update({scores.sweep_best(found.metric, bound): value for bound, value
                       in zip(scores.INTERVAL_BOUNDS, (found.ci_low, found.ci_high))})
    now = int(time.time() * 1000)
    return [Metric(name, float(value), now, 0) for name, value in values.items() if value is not None and math.isfinite(value)]

def view_key(parent_id: str) -> str:
    return VIEW_KEY_PREFIX + parent_id

def runs_view(summary: SweepSummary) -> dict:
    """The runs table of the sweep, as MLflow 3.17's UI restores a shared view (`viewStateShareKey`): only
    the sweep's children, sorted best first on the value they returned for the objective, with it and the
    swept knobs as columns. (The UI reads the filter and the sort from a URL too, but the columns only
    from a saved or shared view.)"""
    state = {"searchFilter": f"tags.`{tracking.PARENT_RUN_TAG}` = '{summary.parent_id}'",
             "selectedColumns": [f"params.`{key}`" for key in summary.keys]}
    metric = summary.best_metric or summary.rank_metric
    if metric:
        state.update(orderByKey=f"metrics.`{metric}`", orderByAsc=scores.comparable_direction(metric) == scores.LOWER)
        state["selectedColumns"].insert(0, f"metrics.`{metric}`")
    return state

def log_runs_view(client, summary: SweepSummary) -> str:
    """The sweep's runs view (`runs_view`) as an experiment tag; returns its key."""
    key = view_key(summary.parent_id)
    client.set_experiment_tag(summary.experiment_id, tracking.SHARED_VIEW_TAG + key, json.dumps(runs_view(summary)))
    return key

def description(summary: SweepSummary, columns: list[str], objective: str | None, comparison_lines: list[str],
                 variance_lines: list[str] = ()) -> str:
    """The parent's description, shortest first: the best job (its objective's direction, links to its run
    and to the runs table), the table of every job best first, then what did not finish and the seed comparison."""
    lines = []
    best = summary.best
    if best is not None:
        chosen_on = summary.best_metric or objective
        links = f"[its run]({tracking.run_link(best.info.experiment_id, best.info.run_id)})"
        if summary.parent_id:
            links += f", [all runs best first]({tracking.view_link(summary.experiment_id, view_key(summary.parent_id))})"
            if summary.montage is not None:  # the Artifacts tab draws it whole, where the image card shows part of it
                montage = tracking.run_link(summary.experiment_id, summary.parent_id, f"{SUMMARY_DIR}/{summary.montage.name}")
                links += f", [every job's samples]({montage})"
        # as the table prints the column (324.0 beside 318.2), so the line and its table agree
        ranked = summary.ranked if best in summary.ranked else [best]
        value = scores.format_column(chosen_on, [child.data.metrics.get(chosen_on) for child in ranked])[ranked.index(best)]
        lines.append(f"**Best job** for `{chosen_on}` ({scores.direction(chosen_on)} is better): {BEST_MARK} "
                     f"{label_of(summary, best)} ({chosen_on} {value}), {links}.")
        lines.append("")
    lines += [_linked_table(summary, columns), ""]
    if summary.not_finished:
        lines += [f"**{len(summary.not_finished)} of {summary.jobs} jobs did not finish:**", ""]
        lines += [f"- {line}" for line in summary.not_finished] + [""]
    if comparison_lines:
        lines += ["**Across seeds** (95% intervals, Welch):", ""] + [f"- {line}" for line in comparison_lines] + [""]
    if variance_lines:
        lines += ["**Training or sampling variance** (final values; see comparison.md):", ""]
        lines += [f"- {line}" for line in variance_lines] + [""]
    return "\n".join(lines).rstrip("\n")

def _linked_table(summary: SweepSummary, columns: list[str]) -> str:
    """Every job best first: its setting linked to its run (the best one marked), its scores, its status
    where some job did not finish."""
    children = summary.ranked
    best_id = summary.best.info.run_id if summary.best is not None else None
    settings = []
    for child in children:
        link = f"[{label_of(summary, child)}]({tracking.run_link(child.info.experiment_id, child.info.run_id)})"
        settings.append(f"{BEST_MARK} {link}" if child.info.run_id == best_id else link)
    body = [settings] + [scores.format_column(name, [child.data.metrics.get(name) for child in children]) for name in columns]
    header = ["setting", *columns]
    if any(child.info.status != "FINISHED" for child in children):
        header.append("status")
        body.append([child.info.status for child in children])
    return markdown_table(header, [list(row) for row in zip(*body)], right=set(range(1, len(columns) + 1)), gap=UI_GAP)

"""A sweep's summary: its table, heatmap, sample montage, best job and seed comparison.

Both the sweep callback (`ganlab.sweep`, at the end of every multirun) and
`python -m ganlab.report` call this module. It reads the children's final metrics from
the runs themselves and fetches each child's metric histories at most once.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ganlab import scores, tracking

SEED_KEY = "seed"
RECORD = "runs.csv"  # the values behind comparison.csv, enough to compute it again


@dataclass
class SweepSummary:
    files: list[Path] = field(default_factory=list)
    best: object | None = None  # the best finished child for the objective
    keys: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    description: str = ""  # Markdown for the parent's mlflow.note.content


def job_rows(children, keys) -> list[dict]:
    """One row per child: job number, swept values, status, final metrics, run id."""
    rows = []
    for child in children:
        row = {"job": child.data.tags.get("sweep.job_num", ""), "run_id": child.info.run_id, "status": child.info.status}
        row.update({key: child.data.params.get(key, "") for key in keys})
        row.update({name: value for name, value in child.data.metrics.items() if scores.is_known(name)})
        rows.append(row)
    return rows


def metric_columns(rows) -> list[str]:
    """The metrics any job logged, in registry order, derived names after their base."""
    logged = {name for row in rows for name in row if scores.is_known(name)}
    ordered = [name for name in (*scores.SCORE_NAMES, *scores.TRAINING_NAMES) if name in logged]
    return ordered + sorted(logged - set(ordered))


def summarize(client, children, keys: list[str], objective: str | None, folder: Path) -> SweepSummary:
    """Write the sweep's table, heatmap, montage (and seed comparison) into `folder`."""
    keys = [key for key in keys if any(key in child.data.params for child in children)] or varying_params(children)
    rows = job_rows(children, keys)
    summary = SweepSummary(keys=keys, rows=rows)
    metrics = metric_columns(rows)
    summary.files.append(_write_csv(rows, ["job", *keys, "status", *metrics, "run_id"], folder / "sweep_summary.csv"))
    headline = [name for name in scores.HEADLINE if name in metrics] or [name for name in metrics if scores.direction(name)][:3]
    table = _markdown(rows, [*keys, *headline, "status", "job"])
    (folder / "sweep_summary.md").write_text(table + "\n")
    summary.files.append(folder / "sweep_summary.md")

    finished = [child for child in children if child.info.status == "FINISHED"]
    if objective:
        summary.best = scores.pick_best(objective, finished, lambda child: child.data.metrics.get(objective))

    grid_keys = [key for key in keys if key != SEED_KEY]
    heat_metric = next((name for name in (scores.FID, scores.G_LOSS) if name in metrics), None)
    if len(grid_keys) == 2 and heat_metric:
        summary.files.append(heatmap(rows, grid_keys, heat_metric, folder))
    montage = _montage(client, children, rows, keys, folder)
    if montage is not None:
        summary.files.append(montage)

    comparison_lines = []
    if SEED_KEY in keys and grid_keys and len(finished) > 1:
        comparison_lines = _seed_comparison(client, finished, grid_keys, metrics, folder, summary)
    summary.description = _description(summary, table, objective, comparison_lines)
    return summary


def log_on_parent(client, run_id: str, summary: SweepSummary, objective: str | None) -> None:
    """The parent shows the best job: its scores as metrics, its swept values as params, and the description."""
    from mlflow.entities import Metric, Param, RunTag

    best = summary.best
    tags = [RunTag(tracking.NOTE_TAG, summary.description)]
    if best is not None:
        step = int(best.data.params.get("epochs", 0))
        metrics = [Metric(name, value, 0, step) for name, value in best.data.metrics.items() if scores.is_known(name)]
        params = [Param(key, best.data.params[key]) for key in summary.keys if key in best.data.params]
        client.log_batch(run_id, metrics=metrics, params=params)
        tags += [RunTag("best.run_id", best.info.run_id), RunTag(f"best.{objective}", str(best.data.metrics[objective])),
                 RunTag("best.overrides", best.data.tags.get("hydra.overrides", ""))]
    client.log_batch(run_id, tags=tags)


def varying_params(children) -> list[str]:
    """Params whose values differ between the jobs (when the swept keys are not known)."""
    values: dict[str, set] = {}
    for child in children:
        for key, value in child.data.params.items():
            values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def heatmap(rows, grid_keys, metric, folder: Path) -> Path:
    """sweep_heatmap_<metric>.png: each cell of the two keys' grid the mean over its jobs' final values."""
    from ganlab import plots

    return plots.save_sweep_heatmap(cell_means(rows, grid_keys, metric), grid_keys[0], grid_keys[1], metric,
                                    folder / f"sweep_heatmap_{metric}.png")


def cell_means(rows, grid_keys, metric) -> list[dict]:
    """One cell per combination of the grid keys, over the jobs that differ only in other keys
    (the seeds): the mean, the half-width of its 95% interval (NaN for one job) and the count."""
    from ganlab import comparison

    cells: dict[tuple, list[float]] = {}
    for row in rows:
        value = row.get(metric)
        if value is not None and not math.isnan(value):
            cells.setdefault(tuple(row[key] for key in grid_keys), []).append(value)
    averaged = []
    for cell, values in cells.items():
        summary = comparison.summarize(values)
        averaged.append({**dict(zip(grid_keys, cell)), metric: summary.mean,
                         "half_width": (summary.ci_high - summary.ci_low) / 2, "n": summary.n})
    return averaged


def _montage(client, children, rows, keys, folder: Path) -> Path | None:
    from ganlab import plots

    with tempfile.TemporaryDirectory() as scratch:  # the downloaded grids are not part of the summary
        grids, labels = [], []
        for child, row in zip(children, rows):
            try:
                local = client.download_artifacts(child.info.run_id, "samples.png", scratch)
            except Exception:  # a job that failed before its final grid
                continue
            grids.append(Path(local).rename(Path(scratch) / f"grid_{len(grids)}.png"))
            labels.append(" ".join(f"{key}={row[key]}" for key in keys) or f"job {row['job']}")
        if not grids:
            return None
        epochs = {child.data.params.get("epochs") for child in children}
        title = f"final samples (epoch {epochs.pop()})" if len(epochs) == 1 else "final samples"
        return plots.save_montage(grids, labels, folder / "sweep_samples.png", title=title)


def histories(client, runs, metrics) -> dict[str, dict[str, dict[int, float]]]:
    """{run id: {metric: {epoch: value}}}, each run's history of each metric fetched once."""

    return {run.info.run_id: tracking.metric_histories(client, run.info.run_id, metrics) for run in runs}


def run_observations(runs, logged, keys) -> list:
    """The seed comparison's input: one Observation per logged value of each run, carrying the
    run's values of `keys` (all the swept keys but seed, so that a run is known by them and its seed)."""
    from ganlab import comparison

    found = []
    for run in runs:
        group = {key: run.data.params.get(key, "") for key in keys}
        for metric, history in logged[run.info.run_id].items():
            found += [comparison.Observation(group, run.data.params.get(SEED_KEY, ""), metric, step, value)
                      for step, value in history.items()]
    return found


def seed_comparison(observations, keys, metrics, reference, folder: Path) -> list:
    """Seeds are replicates: compare the groups of `keys` across them; writes comparison.csv/.md
    and comparison_<metric>.png into `folder` and returns the comparison rows."""
    from ganlab import comparison

    if reference is None:
        groups = [dict(group) for group in {tuple((key, o.group.get(key)) for key in keys) for o in observations}]
        reference = comparison.default_reference(groups, keys)
    rows = comparison.compare(observations, keys, reference, metrics=metrics)
    comparison.write_csv(rows, folder / "comparison.csv")
    comparison.write_markdown(rows, folder / "comparison.md", {name: scores.direction(name) for name in metrics})
    for metric in {row.metric for row in rows}:
        comparison.plot_metric(rows, metric, folder / f"comparison_{metric}.png")
    return rows


def _seed_comparison(client, finished, grid_keys, metrics, folder: Path, summary: SweepSummary) -> list[str]:
    """The sweep's own seed comparison (its scores with a direction), and a sentence per swept key."""
    from ganlab import comparison

    compared = [name for name in metrics if name in scores.SCORE_NAMES and scores.direction(name)] or [scores.G_LOSS]
    logged = histories(client, finished, compared)
    values = run_observations(finished, logged, grid_keys)
    comparison.write_record(values, grid_keys, folder / RECORD)
    rows = seed_comparison(values, grid_keys, compared, None, folder)
    summary.files += [folder / "comparison.csv", folder / "comparison.md", folder / RECORD]
    summary.files += sorted(folder.glob("comparison_*.png"))
    with_diff = [row for row in rows if row.diff is not None]
    if not with_diff:
        return []
    last_epoch = max(row.epoch for row in rows)
    headline = scores.FID if scores.FID in compared else compared[0]
    return [comparison.sentence(rows, key, headline, last_epoch, scores.direction(headline)) for key in grid_keys]


def _description(summary: SweepSummary, table: str, objective: str | None, comparison_lines: list[str]) -> str:
    lines = []
    best = summary.best
    if best is not None:
        shown = " ".join(f"{key}={best.data.params.get(key)}" for key in summary.keys)
        lines.append(f"**Best job** for `{objective}`: {shown} ({objective} "
                     f"{scores.format_value(objective, best.data.metrics[objective])}), "
                     f"[run {best.info.run_id[:8]}](#/experiments/{best.info.experiment_id}/runs/{best.info.run_id}).")
        lines.append("")
    if comparison_lines:
        lines += ["**Across seeds** (95% intervals, Welch):", ""] + [f"- {line}" for line in comparison_lines] + [""]
    lines += [table]
    return "\n".join(lines)


def _cell(column: str, value) -> str:
    return scores.format_value(column, value) if scores.is_known(column) else str(value)


def _markdown(rows, columns) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(column, row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(rows, columns, path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path

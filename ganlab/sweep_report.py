"""A sweep's summary: its table, heatmap, sample montage, best job and seed comparison.

Both the sweep callback (`ganlab.sweep`, at the end of every multirun) and
`python -m ganlab.report` call this module. It reads the children's final metrics from
the runs themselves and fetches each child's metric histories at most once.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ganlab import record, scores, tracking
from ganlab.config import OBJECTIVE_AT_BEST

log = logging.getLogger(__name__)

SEED_KEY = "seed"
RECORD = "runs.csv"  # the values behind comparison.csv, enough to compute it again
OBJECTIVE_AT_KEY = "objective_at"  # a job's param: which value of the objective it returned (final or best)
SAMPLES_ARTIFACT = "samples.png"  # a job's final sample grid (ganlab.outputs)
VARIANCE = "variance_split.csv"  # per setting: the runs' variance split into training and sampling parts
# How a run was scored: its scores compare with another run's only where all of these agree
# (params or tags; a value a run lacks counts as its default, or as unknown where none is given).
SCORING_KEYS = ("eval.num_samples", "eval.repeats", "eval.classifier_sha256", "eval.reference", "eval.num_real",
                "data.name", "data.sha256")
SCORING_DEFAULTS = {"eval.repeats": "1", "eval.reference": "test"}  # runs from before these were recorded
REPEATS_KEY = "eval.repeats"


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
    ordered = [name for name in (*scores.SCORE_NAMES, *scores.DIAGNOSTIC_NAMES, *scores.TRAINING_NAMES) if name in logged]
    return ordered + sorted(logged - set(ordered))


def summarize(client, children, keys: list[str], objective: str | None, folder: Path,
              objective_at: str | None = None, runless_jobs: dict[str, str] | None = None) -> SweepSummary:
    """Write the sweep's table, heatmap, montage (and seed comparison) into `folder`.
    The best job is the one that returned the best objective to the sweeper: see `best_job`.
    `runless_jobs` ({job number: overrides}) failed before their run existed; they count as not finished."""
    keys = [key for key in keys if any(key in child.data.params for child in children)] or varying_params(children)
    rows = job_rows(children, keys)
    runless_jobs = runless_jobs or {}
    summary = SweepSummary(keys=keys, rows=rows, not_finished=not_finished(children, runless_jobs),
                           jobs=len(children) + len(runless_jobs))
    metrics = metric_columns(rows)
    summary.files.append(_write_csv(rows, ["job", *keys, "status", *metrics, "run_id"], folder / "sweep_summary.csv"))
    headline = [name for name in scores.HEADLINE if name in metrics] or [name for name in metrics if scores.direction(name)][:3]
    table = _markdown(rows, [*keys, *headline, "status", "job"])
    (folder / "sweep_summary.md").write_text(table + "\n")
    summary.files.append(folder / "sweep_summary.md")

    finished = [child for child in children if child.info.status == "FINISHED"]
    if objective:
        summary.best = best_job(finished, objective, objective_at)
        summary.best_metric = returned_metric(summary.best, objective, objective_at) if summary.best else None

    grid_keys = [key for key in keys if key != SEED_KEY]
    heat_metric = next((name for name in (scores.FID, scores.G_LOSS) if name in metrics), None)
    if len(grid_keys) == 2 and heat_metric:
        summary.files.append(heatmap(rows, grid_keys, heat_metric, folder))
    montage = _montage(client, children, rows, keys, folder)
    if montage is not None:
        summary.files.append(montage)

    comparison_lines = []
    unlike = scoring_difference(finished, grid_keys)
    if unlike:
        comparison_lines = [f"not compared: {unlike}"]
    elif SEED_KEY in keys and grid_keys and len(finished) > 1:
        comparison_lines = _seed_comparison(client, finished, grid_keys, metrics, folder, summary)
    variance_lines = [] if unlike else _variance_split(finished, grid_keys, folder, summary)
    summary.description = _description(summary, table, objective, comparison_lines, variance_lines)
    return summary


def scoring(run, key: str) -> str:
    """How `run` was scored in one respect (`SCORING_KEYS`): its param or tag, else the default ('' = unknown)."""
    return str(run.data.params.get(key, run.data.tags.get(key, SCORING_DEFAULTS.get(key, ""))))


def scoring_difference(runs, keys) -> str | None:
    """One line naming how runs of one group (same values of `keys`) were scored differently, or None
    when every group's runs were scored alike. Unknown values (runs that did not record one) are skipped."""
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault(tuple(run.data.params.get(key, "") for key in keys), []).append(run)
    for key in SCORING_KEYS:
        for group, members in groups.items():
            seen = sorted({scoring(run, key) for run in members} - {""})
            if len(seen) > 1:
                where = " ".join(f"{k}={v}" for k, v in zip(keys, group)) or "all runs"
                shown = ", ".join(value[:12] for value in seen)
                return (f"runs scored differently: {key} differs within the group {where} ({shown}), so their scores "
                        f"are not comparable; compare like runs only, or group by it too (--by "
                        f"{','.join([*keys, key])}).")
    return None


def check_alike_scoring(runs, keys) -> None:
    """InputError (one line, naming the difference) unless every group's runs were scored alike."""
    from ganlab.errors import InputError

    unlike = scoring_difference(runs, keys)
    if unlike:
        raise InputError(unlike)


def variance_splits(runs, keys, metric: str = scores.FID) -> list:
    """Per group of `keys`, the split of its runs' final `metric` into training and sampling variance
    (`seed_stats.variance_split`); only groups whose runs logged `<metric>_sampling_std` (eval.repeats > 1)."""
    from ganlab import comparison, seed_stats

    spread = scores.sampling_std(metric)
    groups: dict[tuple, list] = {}
    for run in runs:
        if metric in run.data.metrics and spread in run.data.metrics:
            groups.setdefault(tuple(run.data.params.get(key, "") for key in keys), []).append(run)
    splits = []
    for group, members in groups.items():
        repeats = int(scoring(members[0], REPEATS_KEY) or 1)
        label = comparison.group_label(dict(zip(keys, group)), keys) or "all runs"
        splits.append(seed_stats.variance_split(label, metric, [run.data.metrics[metric] for run in members],
                                                [run.data.metrics[spread] for run in members], repeats))
    return splits


def _variance_split(finished, keys, folder: Path, summary: SweepSummary) -> list[str]:
    """variance_split.csv, the section appended to comparison.md (or its own variance_split.md),
    and a description line per setting, where the runs logged repeated draws."""
    from dataclasses import astuple

    from ganlab import comparison

    splits = variance_splits(finished, keys)
    if not splits:
        return []
    with open(folder / VARIANCE, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(comparison.VARIANCE_HEADER)
        writer.writerows(astuple(split) for split in splits)
    section = comparison.variance_markdown(splits)
    target = folder / "comparison.md"
    if target.is_file():
        target.write_text(target.read_text().rstrip("\n") + "\n\n" + section)
    else:
        target = folder / "variance_split.md"
        target.write_text(section)
    summary.files += [path for path in (folder / VARIANCE, target) if path not in summary.files]
    return [f"{split.group}: {split.metric} variance between runs {scores.format_value(split.metric, split.total)}, "
            f"of which sampling {scores.format_value(split.metric, split.sampling)} and training "
            f"{scores.format_value(split.metric, split.training)}: {split.dominant} dominates" for split in splits]


def not_finished(children, runless_jobs: dict[str, str]) -> list[str]:
    """One line per job that did not finish: its number, overrides and why."""
    lines = [f"job {child.data.tags.get('sweep.job_num')} ({child.data.tags.get('hydra.overrides', '')}): "
             f"{child.data.tags.get('failure_reason', child.info.status)}"
             for child in children if child.info.status != "FINISHED"]
    lines += [f"job {job} ({overrides}): failed before its MLflow run existed (its traceback is in the job's log)"
              for job, overrides in runless_jobs.items()]
    return lines


def returned_metric(child, objective: str, objective_at: str | None = None) -> str:
    """The metric whose value `child` returned to the sweeper for `objective`, as `ganlab.epochs` chose it:
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


def log_on_parent(client, run_id: str, summary: SweepSummary, objective: str | None) -> None:
    """The parent shows the best job: its scores as metrics, its swept values as params, and the description;
    tag `best.<metric>` holds the value it was chosen on (`best.fid`, or `best.fid_best` for objective_at=best)."""
    from mlflow.entities import Metric, Param, RunTag

    best = summary.best
    tags = [RunTag(tracking.NOTE_TAG, summary.description)]
    if best is not None:
        step = int(best.data.params.get("epochs", 0))
        metrics = [Metric(name, value, 0, step) for name, value in best.data.metrics.items() if scores.is_known(name)]
        params = [Param(key, best.data.params[key]) for key in summary.keys if key in best.data.params]
        client.log_batch(run_id, metrics=metrics, params=params)
        chosen_on = summary.best_metric or objective
        tags += [RunTag("best.run_id", best.info.run_id), RunTag(f"best.{chosen_on}", str(best.data.metrics[chosen_on])),
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
                local = client.download_artifacts(child.info.run_id, SAMPLES_ARTIFACT, scratch)
            except Exception as error:  # noqa: BLE001 - e.g. a job that failed before its final grid: left out, said why
                log.warning("sweep montage: left out job %s (run %s, %s): could not download its %s (%s: %s)",
                            row["job"], child.info.run_id, child.info.status, SAMPLES_ARTIFACT,
                            type(error).__name__, error)
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
    found = []
    for run in runs:
        group = {key: run.data.params.get(key, "") for key in keys}
        for metric, history in logged[run.info.run_id].items():
            found += [record.Observation(group, run.data.params.get(SEED_KEY, ""), metric, step, value)
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
    record.write_observations(values, grid_keys, folder / RECORD)
    rows = seed_comparison(values, grid_keys, compared, None, folder)
    summary.files += [folder / "comparison.csv", folder / "comparison.md", folder / RECORD]
    summary.files += sorted(folder.glob("comparison_*.png"))
    with_diff = [row for row in rows if row.diff is not None]
    if not with_diff:
        return []
    last_epoch = max(row.epoch for row in rows)
    headline = scores.FID if scores.FID in compared else compared[0]
    return [comparison.sentence(rows, key, headline, last_epoch, scores.direction(headline)) for key in grid_keys]


def _description(summary: SweepSummary, table: str, objective: str | None, comparison_lines: list[str],
                 variance_lines: list[str] = ()) -> str:
    lines = []
    best = summary.best
    if best is not None:
        shown = " ".join(f"{key}={best.data.params.get(key)}" for key in summary.keys)
        chosen_on = summary.best_metric or objective
        lines.append(f"**Best job** for `{chosen_on}`: {shown} ({chosen_on} "
                     f"{scores.format_value(chosen_on, best.data.metrics[chosen_on])}), "
                     f"[run {best.info.run_id[:8]}](#/experiments/{best.info.experiment_id}/runs/{best.info.run_id}).")
        lines.append("")
    if summary.not_finished:
        lines += [f"**{len(summary.not_finished)} of {summary.jobs} jobs did not finish:**", ""]
        lines += [f"- {line}" for line in summary.not_finished] + [""]
    if comparison_lines:
        lines += ["**Across seeds** (95% intervals, Welch):", ""] + [f"- {line}" for line in comparison_lines] + [""]
    if variance_lines:
        lines += ["**Training or sampling variance** (final values; see comparison.md):", ""]
        lines += [f"- {line}" for line in variance_lines] + [""]
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

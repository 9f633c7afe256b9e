"""A sweep's summary: its table, heatmap, sample montages, best job, seed comparison and runs view.

Both the sweep callback (`ganlab.sweeps.sweep`, at the end of every multirun) and
`python -m ganlab.report` call this module. It reads the children's final metrics from
the runs themselves and fetches each child's metric histories at most once. `summarize`
writes the summary's files: the table of every job (sweep_summary.csv/.md), the pictures
(`ganlab.sweeps.pictures`), and, where seeds are replicates, the seed comparison and the
variance split; the jobs' order and the best job are `ganlab.sweeps.ranking`'s, and what
the parent run shows of it is `ganlab.sweeps.parent`'s (`log_on_parent`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from ganlab.core import record
from ganlab.core import scores
from ganlab.core.markdown import table as markdown_table
from ganlab.sweeps import parent
from ganlab.sweeps import pictures
from ganlab.sweeps.settle_store import artifacts_of  # a settle sweep's reused run keeps its pictures in its own run
from ganlab.sweeps.ranking import SUMMARY_TABLE, SweepSummary, best_job, job_rows, metric_columns, not_finished, ranked, returned_metric, varying_params
from ganlab.tracking import store as tracking

# The names callers read from here, whose homes are the modules beside this one.
from ganlab.sweeps.parent import BEST_MARK, UI_GAP, log_on_parent, view_key  # noqa: F401,E402
from ganlab.sweeps.pictures import IMAGES_DIR, MONTAGE, STEP_IMAGE, cell_means, heatmap  # noqa: F401,E402
from ganlab.training.epochs import LATEST_STEP, SAMPLES_KEY  # noqa: F401,E402

from ganlab.core.config import SEED_KEY  # noqa: E402 - the seed knob's name, here for the sweep modules
RECORD = "runs.csv"  # the values behind comparison.csv, enough to compute it again
VARIANCE = "variance_split.csv"  # per setting: the runs' variance split into training and sampling parts
# How a run was scored: its scores compare with another run's only where all of these agree
# (params or tags; a value a run lacks counts as its default, or as unknown where none is given).
SCORING_KEYS = ("eval.num_samples", "eval.repeats", tracking.CLASSIFIER_SHA_TAG, "eval.reference", "eval.num_real",
                "data.name", tracking.DATA_SHA_TAG)
SCORING_DEFAULTS = {"eval.repeats": "1", "eval.reference": "test"}  # runs from before these were recorded
REPEATS_KEY = "eval.repeats"


def summarize(client, children, keys: list[str], objective: str | None, folder: Path,
              objective_at: str | None = None, runless_jobs: dict[str, tuple[str, str]] | None = None) -> SweepSummary:
    """Write the sweep's table, heatmap, montage (and seed comparison) into `folder`.
    The best job is the one that returned the best objective to the sweeper: see `best_job`.
    `runless_jobs` ({job number: (overrides, why)}) never had a run; they count as not finished."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # a sweep folder's summary/ may not exist yet; an earlier one is overwritten
    keys = [key for key in keys if any(key in child.data.params for child in children)] or varying_params(children)
    rows = job_rows(children, keys)
    runless_jobs = runless_jobs or {}
    summary = SweepSummary(keys=keys, rows=rows, not_finished=not_finished(children, runless_jobs),
                           jobs=len(children) + len(runless_jobs), objective_at=objective_at)
    if children:
        summary.parent_id = children[0].data.tags.get(tracking.PARENT_RUN_TAG)
        summary.experiment_id = children[0].info.experiment_id
    metrics = metric_columns(rows)
    summary.rank_metric = objective or (scores.FID if scores.FID in metrics else None)
    summary.ranked = ranked(children, summary.rank_metric, objective_at)
    summary.files.append(_write_csv(rows, ["job", *keys, "status", *metrics, "run_id"], folder / "sweep_summary.csv"))
    headline = [name for name in scores.HEADLINE if name in metrics] or [name for name in metrics if scores.direction(name)][:3]
    by_id = {row["run_id"]: row for row in rows}
    ranked_rows = [by_id[child.info.run_id] for child in summary.ranked]
    (folder / SUMMARY_TABLE).write_text(_markdown(ranked_rows, [*keys, *headline, "status", "job"]) + "\n")
    summary.files.append(folder / SUMMARY_TABLE)

    finished = [child for child in children if child.info.status == "FINISHED"]
    if objective:
        summary.best = best_job(finished, objective, objective_at)
        summary.best_metric = returned_metric(summary.best, objective, objective_at) if summary.best else None

    grid_keys = [key for key in keys if key != SEED_KEY]
    heat_metric = next((name for name in (scores.FID, scores.G_LOSS) if name in metrics), None)
    if len(grid_keys) == 2 and heat_metric:
        summary.files.append(pictures.heatmap(rows, grid_keys, heat_metric, folder))
    drawn = pictures.curves(client, summary, folder)  # every job's objective per epoch, the legend best first
    if drawn is not None:
        summary.files.append(drawn)
    summary.grids = {child.info.run_id: pictures.sample_grids(client, artifacts_of(child)) for child in children}
    summary.montage = pictures.latest_montage(client, summary, folder / MONTAGE)
    if summary.montage is not None:
        summary.files.append(summary.montage)

    comparison_lines = []
    unlike = scoring_difference(finished, grid_keys)
    if unlike:
        comparison_lines = [f"not compared: {unlike}"]
    elif SEED_KEY in keys and grid_keys and len(finished) > 1:
        comparison_lines = _seed_comparison(client, finished, grid_keys, metrics, folder, summary)
    variance_lines = [] if unlike else _variance_split(finished, grid_keys, folder, summary)
    columns = [name for name in (summary.best_metric, *headline) if name]
    summary.description = parent.description(summary, list(dict.fromkeys(columns)), objective, comparison_lines, variance_lines)
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
    from ganlab.core.errors import InputError

    unlike = scoring_difference(runs, keys)
    if unlike:
        raise InputError(unlike)

def variance_splits(runs, keys, metric: str = scores.FID) -> list:
    """Per group of `keys`, the split of its runs' final `metric` into training and sampling variance
    (`seed_stats.variance_split`); only groups whose runs logged `<metric>_sampling_std` (eval.repeats > 1)."""
    from ganlab.sweeps import comparison
    from ganlab.sweeps import seed_stats

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

    from ganlab.sweeps import comparison

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
    from ganlab.sweeps import comparison

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
    from ganlab.sweeps import comparison

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

def _markdown(rows, columns) -> str:
    """sweep_summary.md: the rows as given, metrics formatted column by column."""
    body = [scores.format_column(column, [row.get(column) for row in rows]) if scores.is_known(column)
            else [str(row.get(column, "")) for row in rows] for column in columns]
    right = {index for index, column in enumerate(columns) if scores.is_known(column)}
    return markdown_table(columns, [list(row) for row in zip(*body)], right)

def _write_csv(rows, columns, path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path

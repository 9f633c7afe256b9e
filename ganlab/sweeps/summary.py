"""A sweep's summary: its table, heatmap, sample montages, best job, seed comparison and runs view.

Both the sweep callback (`ganlab.sweeps.sweep`, at the end of every multirun) and
`python -m ganlab.report` call this module. It reads the children's final metrics from
the runs themselves and fetches each child's metric histories at most once.

On the sweep's parent run (`log_on_parent`) the summary becomes what the MLflow UI shows
first: a description (the best setting, a table of every setting best first, linked to
its run), an image `samples` per epoch (every job's grid of that epoch side by side, best
first, each labelled with its setting and score) and a runs-table view of the children
sorted best first (an experiment tag the printed URL names). The parent logs no metrics
and no params of its own: the best job's values are `best.` tags, so the parent never
sorts among its children as if it were one.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ganlab.core import record
from ganlab.core import scores
from ganlab.tracking import store as tracking
from ganlab.core.config import OBJECTIVE_AT_BEST
from ganlab.training.epochs import LATEST_STEP, SAMPLES_KEY  # a job's sample grid: an image at each epoch, the latest at step 0

log = logging.getLogger(__name__)

SEED_KEY = "seed"
RECORD = "runs.csv"  # the values behind comparison.csv, enough to compute it again
OBJECTIVE_AT_KEY = "objective_at"  # a job's param: which value of the objective it returned (final or best)
SAMPLES_ARTIFACT = "samples.png"  # a job's final sample grid (ganlab.training.outputs)
VARIANCE = "variance_split.csv"  # per setting: the runs' variance split into training and sampling parts
# How a run was scored: its scores compare with another run's only where all of these agree
# (params or tags; a value a run lacks counts as its default, or as unknown where none is given).
SCORING_KEYS = ("eval.num_samples", "eval.repeats", "eval.classifier_sha256", "eval.reference", "eval.num_real",
                "data.name", "data.sha256")
SCORING_DEFAULTS = {"eval.repeats": "1", "eval.reference": "test"}  # runs from before these were recorded
REPEATS_KEY = "eval.repeats"
IMAGES_DIR = "images"  # where MLflow's log_image(key=, step=) keeps its images
# images/<key>+step+<step>+timestamp+<ms>+<uuid>.png (MLflow 3; older versions wrote % for +); the .webp beside
# it is a preview
STEP_IMAGE = re.compile(r"^images/(?P<key>[^+%]+)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%](?P<time>\d+)"
                        r"[+%][^+%/]+\.png$")
MONTAGE = "sweep_samples.png"  # the final montage, a file of the summary
VIEW_KEY_PREFIX = "sweep-"  # a sweep's runs-table view: tracking.SHARED_VIEW_TAG + VIEW_KEY_PREFIX + <parent run id>
BEST_MARK = "★"  # marks the best job's row in the parent's description
UI_GAP = "&nbsp;&nbsp;"  # space between a description table's columns: the UI trims spaces, not this


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
    parent_id: str | None = None  # the parent run of the children (their mlflow.parentRunId tag)
    experiment_id: str | None = None


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
    (folder / "sweep_summary.md").write_text(_markdown(ranked_rows, [*keys, *headline, "status", "job"]) + "\n")
    summary.files.append(folder / "sweep_summary.md")

    finished = [child for child in children if child.info.status == "FINISHED"]
    if objective:
        summary.best = best_job(finished, objective, objective_at)
        summary.best_metric = returned_metric(summary.best, objective, objective_at) if summary.best else None

    grid_keys = [key for key in keys if key != SEED_KEY]
    heat_metric = next((name for name in (scores.FID, scores.G_LOSS) if name in metrics), None)
    if len(grid_keys) == 2 and heat_metric:
        summary.files.append(heatmap(rows, grid_keys, heat_metric, folder))
    summary.grids = {child.info.run_id: sample_grids(client, child.info.run_id) for child in children}
    summary.montage = latest_montage(client, summary, folder / MONTAGE)
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
    summary.description = _description(summary, list(dict.fromkeys(columns)), objective, comparison_lines, variance_lines)
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


def not_finished(children, runless_jobs: dict[str, tuple[str, str]]) -> list[str]:
    """One line per job that did not finish: its number, overrides and why."""
    lines = [f"job {child.data.tags.get('sweep.job_num')} ({child.data.tags.get('hydra.overrides', '')}): "
             f"{child.data.tags.get('failure_reason', child.info.status)}"
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


def log_on_parent(client, run_id: str, summary: SweepSummary, objective: str | None) -> str | None:
    """What the parent run shows of its sweep: the description; tags `best.run_id`, `best.overrides` and
    `best.<metric>` (the value the best job was chosen on: `best.fid`, or `best.fid_best` for objective_at=best),
    and no metrics or params of its own; an image `samples` per epoch (`log_epoch_montages`); and the runs-table
    view of its children, best first. Returns that view's key (`tracking.view_link`), None without one."""
    from mlflow.entities import RunTag

    key = log_runs_view(client, summary) if summary.parent_id == run_id else None  # its children: their view
    best = summary.best
    tags = [RunTag(tracking.NOTE_TAG, summary.description)]
    if best is not None:
        chosen_on = summary.best_metric or objective
        tags += [RunTag("best.run_id", best.info.run_id), RunTag(f"best.{chosen_on}", str(best.data.metrics[chosen_on])),
                 RunTag("best.overrides", best.data.tags.get(tracking.OVERRIDES_TAG, ""))]
    client.log_batch(run_id, tags=tags)
    log_epoch_montages(client, run_id, summary)
    return key


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


def sample_grids(client, run_id: str) -> dict[int, str]:
    """{epoch: artifact path} of a run's `samples` images (the latest image of an epoch logged twice);
    {} when the store cannot list them (the final grid, samples.png, still makes the montage)."""
    try:
        listed = client.list_artifacts(run_id, IMAGES_DIR)
    except Exception as error:  # noqa: BLE001 - whatever the store raises
        log.debug("sweep montage: could not list %s/ of run %s: %s", IMAGES_DIR, run_id, error)
        return {}
    found: dict[int, tuple[int, str]] = {}
    for item in listed:
        match = STEP_IMAGE.match(item.path)
        if match and match["key"] == SAMPLES_KEY:
            step, time = int(match["step"]), int(match["time"])
            if step not in found or time >= found[step][0]:
                found[step] = (time, item.path)
    return {step: path for step, (_, path) in sorted(found.items())}


def log_epoch_montages(client, run_id: str, summary: SweepSummary) -> None:
    """For every epoch at which any job logged a `samples` grid, the montage of the jobs' grids of that
    epoch as the parent's image `samples` at that step, and the final montage at LATEST_STEP (where the
    UI's image card opens, as on the jobs' own runs): the parent's image card, with its step slider, shows
    the settings side by side at any epoch. Best first (the final ranking, so a setting keeps its place
    from epoch to epoch), each labelled with its setting and its score at that epoch where it has one."""
    from ganlab.core import plots  # matplotlib loads only when a picture is made

    epochs = sorted({epoch for grids in summary.grids.values() for epoch in grids} - {LATEST_STEP})
    if not any(summary.grids.values()):
        return
    metric = summary.rank_metric  # the objective's own value at each epoch (fid, also with objective_at=best)
    history = {child.info.run_id: tracking.metric_histories(client, child.info.run_id, [metric])[metric]
               for child in summary.ranked if metric and summary.grids.get(child.info.run_id)}
    with tempfile.TemporaryDirectory() as scratch:
        for epoch in epochs:
            files, labels = [], []
            for child in summary.ranked:
                path = summary.grids.get(child.info.run_id, {}).get(epoch)
                if path is None:
                    continue
                try:
                    local = Path(client.download_artifacts(child.info.run_id, path, scratch))
                except Exception as error:  # noqa: BLE001 - left out, said why
                    log.warning("sweep montage of epoch %d: left out run %s: could not download %s (%s: %s)",
                                epoch, child.info.run_id, path, type(error).__name__, error)
                    continue
                files.append(local.rename(Path(scratch) / f"epoch_{epoch}_{len(files)}.png"))
                score = history.get(child.info.run_id, {}).get(epoch)
                labels.append(tile_label(summary, child, metric, score))
            if not files:
                continue
            picture = plots.save_labelled_montage(files, labels, Path(scratch) / f"montage_{epoch}.png",
                                            title=montage_title(f"epoch {epoch}", summary, final=False))
            _log_picture(client, run_id, picture, epoch)
            for file in files:
                file.unlink()
    if summary.montage is not None:  # the final montage summarize drew, not drawn again
        _log_picture(client, run_id, summary.montage, LATEST_STEP)


def _log_picture(client, run_id: str, picture: Path, step: int) -> None:
    from PIL import Image

    with Image.open(picture) as image:
        client.log_image(run_id, image.convert("RGB"), key=SAMPLES_KEY, step=step)


def tile_label(summary: SweepSummary, child, metric: str | None, value) -> str:
    """Two lines: the job's setting (its status unless FINISHED), and its `metric` value where it has one."""
    name = label_of(summary, child)
    if child.info.status != "FINISHED":
        name += f" ({child.info.status})"
    return name + (f"\n{metric} {scores.format_value(metric, value)}" if metric and value is not None else "")


def label_of(summary: SweepSummary, child) -> str:
    return tracking.setting(child.data.params, summary.keys) or f"job {child.data.tags.get(tracking.JOB_NUM_TAG, '?')}"


def montage_title(what: str, summary: SweepSummary, final: bool = True) -> str:
    """`what`, and how the tiles are ordered: by the value each job returned, best first."""
    metric = summary.best_metric or summary.rank_metric
    if not metric:
        return what
    return f"{what} · best first by {'' if final else 'final '}{metric} ({scores.direction(metric)} is better)"


def varying_params(children) -> list[str]:
    """Params whose values differ between the jobs (when the swept keys are not known)."""
    values: dict[str, set] = {}
    for child in children:
        for key, value in child.data.params.items():
            values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def heatmap(rows, grid_keys, metric, folder: Path) -> Path:
    """sweep_heatmap_<metric>.png: each cell of the two keys' grid the mean over its jobs' final values."""
    from ganlab.core import plots

    return plots.save_sweep_heatmap(cell_means(rows, grid_keys, metric), grid_keys[0], grid_keys[1], metric,
                                    folder / f"sweep_heatmap_{metric}.png")


def cell_means(rows, grid_keys, metric) -> list[dict]:
    """One cell per combination of the grid keys, over the jobs that differ only in other keys
    (the seeds): the mean, the half-width of its 95% interval (NaN for one job) and the count."""
    from ganlab.sweeps import comparison

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


def latest_montage(client, summary: SweepSummary, path: Path) -> Path | None:
    """Every job's final grid side by side (sweep_samples.png in the summary), best first, labelled with its
    setting and the value it returned: its last epoch's `samples` image, or (a run that logged none) its samples.png."""
    from ganlab.core import plots  # matplotlib loads only when a picture is made

    metric = summary.best_metric or summary.rank_metric
    with tempfile.TemporaryDirectory() as scratch:  # the downloaded grids are not part of the summary
        grids, labels, epochs = [], [], set()
        for child in summary.ranked:
            logged = summary.grids.get(child.info.run_id)
            artifact = logged[max(logged)] if logged else SAMPLES_ARTIFACT
            try:
                local = client.download_artifacts(child.info.run_id, artifact, scratch)
            except Exception as error:  # noqa: BLE001 - e.g. a job that failed before its final grid: left out, said why
                log.warning("sweep montage: left out job %s (run %s, %s): could not download its %s (%s: %s)",
                            child.data.tags.get(tracking.JOB_NUM_TAG, "?"), child.info.run_id, child.info.status,
                            artifact, type(error).__name__, error)
                continue
            grids.append(Path(local).rename(Path(scratch) / f"grid_{len(grids)}.png"))
            returned = returned_metric(child, metric, summary.objective_at) if metric else None
            labels.append(tile_label(summary, child, returned, child.data.metrics.get(returned) if returned else None))
            epochs.add(str(max(logged)) if logged else child.data.params.get("epochs"))
        if not grids:
            return None
        what = f"final samples (epoch {epochs.pop()})" if len(epochs) == 1 else "final samples"
        return plots.save_labelled_montage(grids, labels, path, title=montage_title(what, summary))


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


def _description(summary: SweepSummary, columns: list[str], objective: str | None, comparison_lines: list[str],
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
        value = scores.format_value(chosen_on, best.data.metrics[chosen_on])
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


def markdown_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset(), gap: str = "") -> str:
    """A Markdown table padded so its source reads as a table too; columns in `right` (numbers) right-aligned.
    `gap` goes between columns inside the cells (MLflow's UI draws its tables without cell padding)."""
    if gap:
        def spaced(cells):
            return [f"{gap}{cell}" if index in right else f"{cell}{gap}" for index, cell in enumerate(cells)]

        header, rows = spaced(header), [spaced(row) for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells) -> str:
        return "| " + " | ".join(str(cell).rjust(width) if index in right else str(cell).ljust(width)
                                 for index, (cell, width) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (width + 1) + ":" if index in right else "-" * (width + 2)
                          for index, width in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


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

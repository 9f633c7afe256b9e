"""A sweep's pictures: the montages of every job's sample grids, its curves, best first, and the heatmap.

`summarize` draws the final montage (sweep_samples.png), every job's curve of the objective
(sweep_curves_<metric>.png: one colour per job, a legend naming every job, best first) and the
heatmap over two swept keys into the summary; `log_epoch_montages` gives the parent run an image `samples` per epoch,
every job's grid of that epoch side by side, so the parent's image card with its step
slider shows the settings side by side at any epoch.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

from ganlab.core import scores
from ganlab.core.config import SEED_KEY
from ganlab.sweeps.ranking import BEST_MARK, SweepSummary, label_of, returned_metric
from ganlab.sweeps.settle_store import artifacts_of  # a settle sweep's reused run keeps its pictures in its own run
from ganlab.tracking import store as tracking
from ganlab.training.epochs import LATEST_STEP, SAMPLES_KEY  # a job's sample grid: an image at each epoch, the latest at step 0

log = logging.getLogger("ganlab.sweeps.summary")

SAMPLES_ARTIFACT = "samples.png"  # a job's final sample grid (ganlab.training.outputs)
IMAGES_DIR = "images"  # where MLflow's log_image(key=, step=) keeps its images
# images/<key>+step+<step>+timestamp+<ms>+<uuid>.png (MLflow 3; older versions wrote % for +); the .webp beside
# it is a preview
STEP_IMAGE = re.compile(r"^images/(?P<key>[^+%]+)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%](?P<time>\d+)"
                        r"[+%][^+%/]+\.png$")
MONTAGE = "sweep_samples.png"  # the final montage, a file of the summary


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
    history = {child.info.run_id: summary.histories.get(child.info.run_id)
               or tracking.metric_histories(client, child.info.run_id, [metric])[metric]
               for child in summary.ranked if metric and summary.grids.get(child.info.run_id)}
    with tempfile.TemporaryDirectory() as scratch:
        for epoch in epochs:
            files, tiles = [], []
            for child in summary.ranked:
                path = summary.grids.get(child.info.run_id, {}).get(epoch)
                if path is None:
                    continue
                try:
                    local = Path(client.download_artifacts(artifacts_of(child), path, scratch))
                except Exception as error:  # noqa: BLE001 - left out, said why
                    log.warning("sweep montage of epoch %d: left out run %s: could not download %s (%s: %s)",
                                epoch, child.info.run_id, path, type(error).__name__, error)
                    continue
                files.append(local.rename(Path(scratch) / f"epoch_{epoch}_{len(files)}.png"))
                tiles.append((child, metric, history.get(child.info.run_id, {}).get(epoch)))
            if not files:
                continue
            picture = plots.save_labelled_montage(files, tile_labels(summary, tiles), Path(scratch) / f"montage_{epoch}.png",
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

def tile_labels(summary: SweepSummary, tiles: list[tuple]) -> list[str]:
    """The labels of one picture's (child, metric, value) tiles, each two lines: the job's setting (its status
    unless FINISHED), and its `metric` value where it has one, the values of a metric all with one number of
    decimals (`scores.format_column`: 324.0 beside 318.2, never 324)."""
    shown = {}
    for metric in {metric for _, metric, value in tiles if metric and value is not None}:
        where = [index for index, (_, named, value) in enumerate(tiles) if named == metric and value is not None]
        shown.update(zip(where, scores.format_column(metric, [tiles[index][2] for index in where])))
    labels = []
    for index, (child, metric, _) in enumerate(tiles):
        name = label_of(summary, child)
        if child.info.status != "FINISHED":
            name += f" ({child.info.status})"
        labels.append(name + (f"\n{metric} {shown[index]}" if index in shown else ""))
    return labels

def montage_title(what: str, summary: SweepSummary, final: bool = True) -> str:
    """`what`, and how the tiles are ordered: by the value each job returned, best first."""
    metric = summary.best_metric or summary.rank_metric
    if not metric:
        return what
    return f"{what} · best first by {'' if final else 'final '}{metric} ({scores.direction(metric)} is better)"

def latest_montage(client, summary: SweepSummary, path: Path) -> Path | None:
    """Every job's final grid side by side (sweep_samples.png in the summary), best first, labelled with its
    setting and the value it returned: its last epoch's `samples` image, or (a run that logged none) its samples.png."""
    from ganlab.core import plots  # matplotlib loads only when a picture is made

    metric = summary.best_metric or summary.rank_metric
    with tempfile.TemporaryDirectory() as scratch:  # the downloaded grids are not part of the summary
        grids, tiles, epochs = [], [], set()
        for child in summary.ranked:
            logged = summary.grids.get(child.info.run_id)
            artifact = logged[max(logged)] if logged else SAMPLES_ARTIFACT
            try:
                local = client.download_artifacts(artifacts_of(child), artifact, scratch)
            except Exception as error:  # noqa: BLE001 - e.g. a job that failed before its final grid: left out, said why
                log.warning("sweep montage: left out job %s (run %s, %s): could not download its %s (%s: %s)",
                            child.data.tags.get(tracking.JOB_NUM_TAG, "?"), child.info.run_id, child.info.status,
                            artifact, type(error).__name__, error)
                continue
            grids.append(Path(local).rename(Path(scratch) / f"grid_{len(grids)}.png"))
            returned = returned_metric(child, metric, summary.objective_at) if metric else None
            tiles.append((child, returned, child.data.metrics.get(returned) if returned else None))
            epochs.add(str(max(logged)) if logged else child.data.params.get("epochs"))
        if not grids:
            return None
        what = f"final samples (epoch {epochs.pop()})" if len(epochs) == 1 else "final samples"
        return plots.save_labelled_montage(grids, tile_labels(summary, tiles), path, title=montage_title(what, summary))

def curves(client, summary: SweepSummary, folder: Path) -> Path | None:
    """sweep_curves_<metric>.png: every job's objective (the rank metric) per epoch, one colour each, the legend
    naming every job best first (`curve_lines`); None without a metric or a value."""
    from ganlab.core import plots  # matplotlib loads only when a picture is made

    lines = curve_lines(client, summary)
    if not lines:
        return None
    metric, returned_by = summary.rank_metric, summary.best_metric or summary.rank_metric
    title = (f"{metric} of every job per epoch · legend best first by {returned_by} "
             f"({scores.direction(returned_by)} is better)")
    return plots.save_run_curves(lines, metric, folder / f"sweep_curves_{metric}.png", title)


def curve_lines(client, summary: SweepSummary) -> list[tuple[str, list[int], list[float]]]:
    """(legend label, epochs, values) of every job with a value of the rank metric, best first: its setting and
    the value it returned (`★` before the best). Each job's history is fetched once, into `summary.histories`
    (the epoch montages' labels read it too)."""
    metric = summary.rank_metric
    if not metric:
        return []
    returned_by = summary.best_metric or metric
    repeated = Counter(label_of(summary, child) for child in summary.ranked)  # settings of several runs name the seed
    drawn = []
    for child in summary.ranked:
        if child.info.run_id not in summary.histories:
            summary.histories[child.info.run_id] = tracking.metric_histories(client, child.info.run_id, [metric])[metric]
        if summary.histories[child.info.run_id]:
            drawn.append(child)
    returned = [returned_metric(child, returned_by, summary.objective_at) if summary.best_metric else metric
                for child in drawn]
    labels = tile_labels(summary, [(child, name, child.data.metrics.get(name)) for child, name in zip(drawn, returned)])
    lines = []
    for child, tile in zip(drawn, labels):
        history = summary.histories[child.info.run_id]
        setting, _, value = tile.partition("\n")
        if repeated[label_of(summary, child)] > 1 and SEED_KEY in child.data.params:  # a report grouped by setting
            setting += f" {SEED_KEY}={child.data.params[SEED_KEY]}"
        label = f"{setting}: {value}" if value else setting
        best = summary.best is not None and child.info.run_id == summary.best.info.run_id
        epochs = sorted(history)
        lines.append((f"{BEST_MARK} {label}" if best else label, epochs, [history[epoch] for epoch in epochs]))
    return lines


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

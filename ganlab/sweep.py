"""Sweep tracking: one MLflow parent run per Hydra multirun, with its summary at the end.

`SweepTracking` is a Hydra callback (registered in conf/train.yaml). When a multirun
starts it creates the store, the experiment and the parent run, and leaves the parent's
id in the sweep folder, where every job (in this process or another) finds it. When
the multirun ends it collects the child runs and logs on the parent a summary table
(CSV and Markdown), a heatmap when two keys were swept, and a montage of every job's
final sample grid; a sweep with a failed job ends FAILED and exits non-zero.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ganlab import tracking

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run_id.txt"
SUMMARY_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "fid", "classifier_score", "kid",
                   "precision", "recall", "density", "coverage", "modes_covered", "kl_uniform", "steps_per_sec")
HEATMAP_METRICS = ("fid", "g_loss")  # the first one the jobs logged


def parent_run_id(sweep_dir: Path) -> str | None:
    """The parent run of the sweep whose folder is `sweep_dir`, if the callback made one."""
    file = Path(sweep_dir) / PARENT_RUN_FILE
    return file.read_text().strip() if file.exists() else None


class SweepTracking(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        client, experiment_id = tracking.open_store(config.tracking.uri, config.tracking.experiment)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = " ".join(config.hydra.overrides.task)
        run = client.create_run(
            experiment_id,
            run_name=f"sweep {tracking.run_name_from_overrides(config.hydra.overrides.task)}",
            tags={**tracking.environment_tags(), "sweep.overrides": overrides, "sweep.dir": str(sweep_dir.resolve()), "sweep.parent": "true"},
        )
        (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)
        log.info("MLflow sweep run %s; jobs appear as its children", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        run_id = parent_run_id(sweep_dir)
        if run_id is None:
            return
        client, experiment_id = tracking.open_store(config.tracking.uri, config.tracking.experiment)
        children = client.search_runs(
            [experiment_id], filter_string=f"tags.`{tracking.PARENT_RUN_TAG}` = '{run_id}'", max_results=10000
        )
        children = sorted(children, key=lambda child: int(child.data.tags.get("sweep.job_num", 0)))
        failed = [child for child in children if child.info.status != "FINISHED"]
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            for file in summarize(client, children, scratch):
                client.log_artifact(run_id, str(file), "summary")
        optimizer_report = sweep_dir / "optimization_results.yaml"  # written by the Optuna sweeper
        if optimizer_report.exists():
            client.log_artifact(run_id, str(optimizer_report), "summary")
        best = best_child(children, config.get("objective"), OmegaConf.select(config, "hydra.sweeper.direction"))
        if best is not None:
            client.set_tag(run_id, "best.run_id", best.info.run_id)
            client.set_tag(run_id, f"best.{config.objective}", str(best.data.metrics[config.objective]))
            client.set_tag(run_id, "best.overrides", best.data.tags.get("hydra.overrides", ""))
        status = "FAILED" if failed or not children else "FINISHED"
        client.set_tag(run_id, "sweep.jobs", f"{len(children) - len(failed)} of {len(children)} finished")
        client.set_terminated(run_id, status)
        print(f"ganlab: sweep summary on MLflow run {run_id} ({len(children)} jobs, {len(failed)} failed)", flush=True)
        if failed:
            reasons = "; ".join(
                f"job {child.data.tags.get('sweep.job_num')} ({child.data.tags.get('hydra.overrides', '')}): "
                f"{child.data.tags.get('failure_reason', child.info.status)}"
                for child in failed
            )
            # Hydra turns a callback's exception into a warning; the exit status must say it.
            print(f"{len(failed)} of {len(children)} sweep jobs did not finish: {reasons}", file=sys.stderr, flush=True)
            raise SystemExit(1)


def best_child(children, objective: str | None, direction) -> object | None:
    """The finished job with the best final `objective` (lowest unless direction is maximize)."""
    scored = [c for c in children if c.info.status == "FINISHED" and objective in c.data.metrics]
    if not objective or not scored:
        return None
    maximize = str(direction).lower().endswith("maximize")
    return (max if maximize else min)(scored, key=lambda child: child.data.metrics[objective])


def swept_keys(children) -> list[str]:
    """Override keys whose values differ between the jobs, in the order first given."""
    values: dict[str, set] = {}
    for child in children:
        for item in child.data.tags.get("hydra.overrides", "").split():
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1 or len(children) == 1]


def summarize(client, children, folder: Path) -> list[Path]:
    """Write the sweep's table, heatmap and montage into `folder`; return the files."""
    from ganlab import plots

    keys = swept_keys(children)
    metric_names = [name for name in SUMMARY_METRICS if any(name in child.data.metrics for child in children)]
    rows = []
    for child in children:
        row = {"job": child.data.tags.get("sweep.job_num", ""), "run_id": child.info.run_id, "status": child.info.status}
        row.update({key: child.data.params.get(key, "") for key in keys})
        row.update({name: child.data.metrics.get(name, math.nan) for name in metric_names})
        rows.append(row)
    columns = ["job", *keys, "status", *metric_names, "run_id"]
    files = [_write_csv(rows, columns, folder / "sweep_summary.csv"), _write_markdown(rows, columns, folder / "sweep_summary.md")]

    heat_metric = next((name for name in HEATMAP_METRICS if name in metric_names), None)
    if len(keys) == 2 and heat_metric:
        files.append(plots.save_sweep_heatmap(rows, keys[0], keys[1], heat_metric, folder / f"sweep_heatmap_{heat_metric}.png"))

    grids, labels = [], []
    for child, row in zip(children, rows):
        try:
            grids.append(client.download_artifacts(child.info.run_id, "samples.png", str(folder)))
        except Exception:  # a job that failed before its final grid
            continue
        labels.append(", ".join(f"{key}={row[key]}" for key in keys) or f"job {row['job']}")
        grids[-1] = Path(grids[-1]).rename(folder / f"grid_{row['job']}.png")
    if grids:
        files.append(plots.save_montage(grids, labels, folder / "sweep_samples.png"))
    return files


def _write_csv(rows, columns, path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_markdown(rows, columns, path: Path) -> Path:
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[column]) for column in columns) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path

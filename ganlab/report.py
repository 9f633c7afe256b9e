"""Tables of a sweep's scores: mean and standard deviation over seeds, at chosen epochs.

    python -m ganlab.report --experiment baseline --epochs 1,5,10,25 --by precision --out docs/baseline

Reads the child runs of a sweep's parent run (the newest sweep of the experiment unless
`--parent` names one), groups them by the params named in `--by` (the remaining
variation, usually `seed`, becomes the error bar), and writes `scores.md` and
`scores.csv` (metric at each epoch: mean ± std over the group's runs) and
`samples_<group>.png` (the first run's sample grids at those epochs side by side).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

from ganlab import plots, tracking
from ganlab.errors import InputError

DEFAULT_METRICS = ("fid", "classifier_score", "modes_covered", "precision", "recall")


def sweep_children(client, experiment_id: str, parent: str | None):
    if parent is None:
        parents = client.search_runs([experiment_id], filter_string="tags.`sweep.parent` = 'true'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise InputError("--parent: the experiment has no sweep; run one with -m, or name a parent run id.")
        parent = parents[0].info.run_id
    children = client.search_runs([experiment_id], filter_string=f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent}'",
                                  max_results=10000)
    if not children:
        raise InputError(f"--parent: run {parent} has no child runs.")
    return parent, children


def metric_at(client, run_id: str, metric: str, epoch: int) -> float | None:
    values = [point.value for point in client.get_metric_history(run_id, metric) if point.step == epoch]
    return values[-1] if values else None


def summarize(client, runs, metrics, epochs) -> list[dict]:
    """One row per (epoch, metric): mean, std and count over `runs` (missing epochs skipped)."""
    rows = []
    for epoch in epochs:
        for metric in metrics:
            values = [v for v in (metric_at(client, run.info.run_id, metric, epoch) for run in runs) if v is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                rows.append({"epoch": epoch, "metric": metric, "mean": statistics.fmean(values), "std": std, "runs": len(values)})
    return rows


def markdown(groups: dict[str, list[dict]], metrics, epochs) -> str:
    lines = []
    for label, rows in groups.items():
        lines += [f"**{label}**", "", "| epoch | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for epoch in epochs:
            cells = []
            for metric in metrics:
                row = next((r for r in rows if r["epoch"] == epoch and r["metric"] == metric), None)
                cells.append(f"{row['mean']:.3g} ± {row['std']:.2g}" if row else "-")
            if any(cell != "-" for cell in cells):
                lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="ganlab")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<cwd>/mlruns/mlflow.db")
    parser.add_argument("--parent", default=None, help="the sweep's parent run id (default: the newest sweep)")
    parser.add_argument("--by", default="", help="comma-separated params that make the groups, e.g. precision")
    parser.add_argument("--epochs", default="1,5,10,25,50")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--out", default="report")
    args = parser.parse_args(argv)
    try:
        epochs = [int(epoch) for epoch in args.epochs.split(",")]
    except ValueError:
        print(f"error: --epochs: expected comma-separated integers, got {args.epochs!r}", file=sys.stderr)
        return 2
    metrics = [metric for metric in args.metrics.split(",") if metric]
    keys = [key for key in args.by.split(",") if key]
    try:
        client, experiment_id = tracking.open_store(args.tracking_uri, args.experiment)
        parent, children = sweep_children(client, experiment_id, args.parent)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finished = [run for run in children if run.info.status == "FINISHED"]
    grouped: dict[str, list] = {}
    for run in sorted(finished, key=lambda r: int(r.data.tags.get("sweep.job_num", 0))):
        label = ", ".join(f"{key}={run.data.params.get(key)}" for key in keys) or "all runs"
        grouped.setdefault(label, []).append(run)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {label: summarize(client, runs, metrics, epochs) for label, runs in grouped.items()}
    text = f"Sweep {parent}: {len(finished)} finished runs; mean ± std over the runs of each group.\n\n"
    text += markdown({f"{label} ({len(grouped[label])} runs)": rows for label, rows in tables.items()}, metrics, epochs)
    (out / "scores.md").write_text(text)
    with open(out / "scores.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["group", "epoch", "metric", "mean", "std", "runs"])
        writer.writeheader()
        for label, rows in tables.items():
            writer.writerows({"group": label, **row} for row in rows)
    with tempfile.TemporaryDirectory() as scratch:
        for label, runs in grouped.items():
            grids, titles = [], []
            for epoch in epochs:
                try:
                    grids.append(Path(client.download_artifacts(runs[0].info.run_id, f"samples/epoch_{epoch:03d}.png", scratch)).rename(Path(scratch) / f"{len(grids)}.png"))
                    titles.append(f"epoch {epoch}")
                except Exception:  # that epoch was not trained or not evaluated
                    continue
            if grids:
                name = "samples" + ("_" + "_".join(str(runs[0].data.params.get(key)) for key in keys) if keys else "")
                plots.save_montage(grids, titles, out / f"{name}.png")
    print(text)
    print(f"written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

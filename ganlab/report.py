"""Compare a sweep's groups across seeds: tables with confidence intervals, difference tests, plots.

    python -m ganlab.report --experiment ganlab --by dropout,label_smoothing --epochs 5,10 --out report
    python -m ganlab.report --by dropout --reference dropout=0.3 --metrics fid,recall
    python -m ganlab.report --record docs/study/runs.csv --out report   # again from a record, no MLflow

Reads the child runs of a sweep's parent run (unless `--parent` names one, the newest sweep
of the experiment that has finished runs, named on the output's first line), groups them by
the params named in `--by` (the seeds are the replicates; a swept param left out of `--by`
that varies inside a group is refused, never pooled) and writes into `--out`:
- `comparison.csv` / `comparison.md`: per group, metric and epoch the mean, std and 95%
  confidence interval over seeds, and each group's difference from the reference group
  (`--reference`, default the group at the config's defaults, the tutorial's setting, when
  every grouping key has one in conf/) with its Welch 95% interval, p-value and the seeds
  per group needed to detect it (80% power); `comparison_<metric>.png`: mean against epoch
  per group with the band;
- `runs.csv`: every value those are computed from (group keys, seed, epoch, metric, value).
  `--record runs.csv` computes the comparison and the fid heatmap again from it alone, to
  the last bit, so a published comparison can be regenerated without the MLflow store;
- `scores.md` / `scores.csv`: mean ± std per group at the chosen epochs (std n/a, empty in
  the CSV, where a group has one run);
- the sweep's own summary, as its parent run holds it: `sweep_summary.csv`/`.md`, the fid
  heatmap over two keys and the montage of final samples (`ganlab.sweeps.summary`);
- `samples_<group>.png`: the first run's sample grids at those epochs side by side, titled
  with the group, each grid with its epoch (an artifact that cannot be downloaded is named
  in a warning and left out).
A reused `--out` is first cleared of the files an earlier report wrote there (`REPORT_FILES`; other
files stay), so it never mixes two reports. Only reads the store: it never creates a store or an experiment.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import tempfile
from pathlib import Path

from ganlab.sweeps import comparison, seed_stats
from ganlab.core import config
from ganlab.core.markdown import table as markdown_table
from ganlab.core import plots
from ganlab.core import record
from ganlab.core import scores
from ganlab.sweeps import summary as sweep_report
from ganlab.tracking import store as tracking
from ganlab.core.errors import InputError, report_or_refuse


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help, once: an option whose help already says its default keeps its own words."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ganlab.report", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsShown)
    parser.add_argument("--experiment", default="ganlab", help="the MLflow experiment")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<cwd>/mlruns/mlflow.db")
    parser.add_argument("--parent", default=None, help="the sweep's parent run id (default: the newest sweep with finished runs)")
    parser.add_argument("--by", default="", help="comma-separated params that make the groups, e.g. dropout,label_smoothing (default: none: all finished runs are one group)")
    parser.add_argument("--reference", default=None,
                        help="the group others are compared with, KEY=VALUE[,KEY=VALUE] (default: the config's defaults)")
    parser.add_argument("--epochs", default="1,5,10,25,50", help="epochs for scores.md and the sample montage")
    parser.add_argument("--metrics", default=",".join(scores.HEADLINE), help="comma-separated scores to compare")
    parser.add_argument("--record", default=None, metavar="CSV",
                        help="compare the values of a record (the runs.csv of an earlier report or sweep summary, "
                             "or docs/baseline/runs.csv) instead of reading MLflow")
    parser.add_argument("--out", default="report", help="the folder to write into (an earlier report's files there are replaced)")
    return parser.parse_args(argv)


def parse_reference(text: str | None, keys: list[str]) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [item.partition("=") for item in text.split(",") if item]
    reference = {config.param_key(key): value for key, _, value in pairs}
    if any(not sep or not value for _, sep, value in pairs) or set(reference) - set(keys):
        raise InputError(f"--reference: got {text!r}; expected KEY=VALUE pairs of the --by keys ({', '.join(keys) or 'none'}).")
    return reference


def grouped_runs(children, keys) -> dict[str, list]:
    groups: dict[str, list] = {}
    for run in children:
        if run.info.status == "FINISHED":
            label = comparison.group_label({key: run.data.params.get(key, "") for key in keys}, keys) or "all runs"
            groups.setdefault(label, []).append(run)
    return groups


def score_tables(groups, logged, metrics, epochs) -> dict[str, list[dict]]:
    """mean ± std per group, epoch and metric (epochs a run lacks are skipped); std is NaN for a single value or an
    infinite one."""
    tables = {}
    for label, runs in groups.items():
        rows = []
        for epoch in epochs:
            for metric in metrics:
                values = [logged[run.info.run_id][metric][epoch] for run in runs if epoch in logged[run.info.run_id][metric]]
                if values:  # no spread from one value, or from an infinite one (a class never drawn)
                    found = seed_stats.summarize(values)
                    rows.append({"epoch": epoch, "metric": metric, "mean": found.mean, "std": found.std, "runs": len(values)})
        tables[label] = rows
    return tables


def markdown(groups: dict[str, list[dict]], metrics, epochs) -> str:
    lines = []
    for label, rows in groups.items():
        body = []
        for epoch in epochs:
            cells = []
            for metric in metrics:
                row = next((r for r in rows if r["epoch"] == epoch and r["metric"] == metric), None)
                cells.append("-" if row is None else f"{row['mean']:.3g} ± {spread(row['std'])}")
            if any(cell != "-" for cell in cells):
                body.append([str(epoch), *cells])
        lines += [f"**{label}**", "", markdown_table(["epoch", *metrics], body, padded=False), ""]
    return "\n".join(lines)


def spread(std: float) -> str:
    return "n/a" if math.isnan(std) else f"{std:.2g}"


def runs_count(count: int, what: str = "run") -> str:
    """`1 run`, `3 runs`."""
    return f"{count} {what}{'' if count == 1 else 's'}"


SAMPLES_DIR = "samples"  # a run's sample grid of each evaluated epoch, as epochs.py logs it: samples/epoch_001.png, ...


def write_sample_montages(client, groups, keys, epochs, out: Path) -> None:
    """Per group, its first run's sample grids at `epochs` side by side. Epochs the run did not
    evaluate have no grid and are skipped; a grid it has but that cannot be downloaded is
    named in a warning and left out. A settle sweep's copy of a reused run shows the reused run's grids."""
    from ganlab.sweeps.settle_store import artifacts_of

    with tempfile.TemporaryDirectory() as scratch:
        for runs in groups.values():
            run_id = artifacts_of(runs[0])
            grids = []
            try:
                logged = {item.path for item in client.list_artifacts(run_id, SAMPLES_DIR)}
            except Exception as error:  # noqa: BLE001 - whatever the store raises
                _warn_artifact(f"{SAMPLES_DIR}/", run_id, error)
                continue
            for epoch in epochs:
                name = f"{SAMPLES_DIR}/epoch_{epoch:03d}.png"
                if name not in logged:
                    continue  # that epoch was not trained or not evaluated
                try:
                    local = client.download_artifacts(run_id, name, scratch)
                except Exception as error:  # noqa: BLE001 - whatever the store raises
                    _warn_artifact(name, run_id, error)
                    continue
                grids.append(Path(local).rename(Path(scratch) / f"{len(grids)}.png"))
            if grids:
                values = {key: runs[0].data.params.get(key) for key in keys}
                name = "samples" + ("_" + "_".join(str(value) for value in values.values()) if keys else "")
                group, run_name = tracking.setting(values, keys) or "all runs", runs[0].info.run_name
                title = f"{group}: samples" + ("" if run_name == group else f" of run {run_name}")
                # each grid is titled with its setting and epoch already (ganlab.training.epochs): the tiles need no label
                plots.save_montage(grids, [""] * len(grids), out / f"{name}.png", title=title)


def _warn_artifact(name: str, run_id: str, error: Exception) -> None:
    print(f"warning: could not download artifact {name} of run {run_id} ({type(error).__name__}: {error}); "
          "its samples are left out of the montage.", file=sys.stderr, flush=True)


def run(args) -> str:
    try:
        epochs = [int(epoch) for epoch in args.epochs.split(",")]
    except ValueError:
        raise InputError(f"--epochs: expected comma-separated integers, got {args.epochs!r}.") from None
    try:
        metrics = scores.check_names([m for m in args.metrics.split(",") if m], "--metrics")
    except ValueError as error:
        raise InputError(str(error)) from None
    if not metrics:
        raise InputError(f"--metrics: got {args.metrics!r}; name at least one metric, e.g. --metrics fid,recall.")
    check_out(Path(args.out))
    keys = [config.param_key(key) for key in args.by.split(",") if key]  # --by loss groups by loss.name
    if args.record:
        return run_from_record(Path(args.record), keys, args.reference, metrics, Path(args.out))
    client, experiment_id = tracking.open_reader(args.tracking_uri, args.experiment)
    chosen = ""
    if args.parent is None:
        args.parent, chosen = newest_finished_sweep(client, experiment_id, args.experiment)
    parent, children = tracking.sweep_children(client, experiment_id, args.parent)
    if not children:
        raise InputError(f"--parent: run {parent} has no child runs; give the run id of a sweep's parent run.")
    check_by(keys, children)
    groups = grouped_runs(children, keys)
    if not groups:
        raise InputError(f"--parent: sweep {parent} has no finished runs to compare; name another with --parent <run id>.")
    reference = parse_reference(args.reference, keys)
    finished = [run for runs in groups.values() for run in runs]
    sweep_report.check_alike_scoring(finished, keys)  # one line naming how runs of a group were scored differently
    logged = sweep_report.histories(client, finished, metrics)
    tables = score_tables(groups, logged, metrics, epochs)
    if not any(tables.values()):
        reached = sorted({epoch for run in logged.values() for history in run.values() for epoch in history})
        raise InputError(f"--epochs: no run of sweep {parent} has {', '.join(metrics)} at epoch {args.epochs}; "
                         f"its runs have them at epochs {','.join(map(str, reached)) or 'none'}: pass --epochs with those.")
    out = Path(args.out)
    clear_earlier_report(out)
    out.mkdir(parents=True, exist_ok=True)
    # the record knows each run by every param that varies, so a key left out of --by that varies in a group is refused
    record_keys = keys + [key for key in sweep_report.varying_params(finished) if key not in keys + [sweep_report.SEED_KEY]]
    values = sweep_report.run_observations(finished, logged, record_keys)
    try:
        sweep_report.seed_comparison(values, keys, metrics, reference, out)
    except ValueError as error:
        raise InputError(f"{'--by' if isinstance(error, comparison.PooledKeys) else '--reference'}: {error}") from None
    record.write_observations(values, record_keys, out / sweep_report.RECORD)
    sweep_report.summarize(client, children, keys, None, out)  # the sweep's table, heatmap and montage
    text = (f"Sweep {parent}: {runs_count(len(finished), 'finished run')}; mean ± std over the runs of each group "
            "(n/a for a group of one run).\n\n")
    text += markdown({f"{label} ({runs_count(len(groups[label]))})": rows for label, rows in tables.items()}, metrics, epochs)
    (out / "scores.md").write_text(text)
    with open(out / "scores.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["group", "epoch", "metric", "mean", "std", "runs"])
        writer.writeheader()
        for label, table in tables.items():
            writer.writerows({"group": label, **row, "std": "" if math.isnan(row["std"]) else row["std"]} for row in table)
    write_sample_montages(client, groups, keys, epochs, out)
    return chosen + text + (f"\nwritten to {out}/ (comparison.csv/.md, comparison_<metric>.png, {sweep_report.RECORD}, "
                   "scores.md/.csv, sweep_summary.csv/.md, samples_*.png)")


def newest_finished_sweep(client, experiment_id: str, experiment: str) -> tuple[str, str]:
    """The newest sweep parent run with at least one FINISHED child, and the line that names it:
    a stopped or still running newer sweep is passed over, and said so."""
    parents = client.search_runs([experiment_id], filter_string=f"tags.`{tracking.SWEEP_PARENT_TAG}` = 'true'",
                                 order_by=["attributes.start_time DESC"], max_results=1000)
    for newer, parent in enumerate(parents):
        finished = client.search_runs(
            [experiment_id], max_results=1,
            filter_string=f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'")
        if finished:
            skipped = f"; {newer} newer sweep{'s' if newer > 1 else ''} without finished runs passed over" if newer else ""
            return parent.info.run_id, (f"report on sweep {parent.info.run_id} (\"{parent.info.run_name}\"), the "
                                        f"newest with finished runs{skipped}; --parent <run id> picks another.\n\n")
    if not parents:
        raise InputError(f"--parent: experiment {experiment!r} has no sweep; run one with -m, or name a sweep's "
                         "parent run with --parent <run id> (and its experiment with --experiment).")
    which = (f"the one sweep of experiment {experiment!r} has no finished runs" if len(parents) == 1 else
             f"none of the {len(parents)} sweeps of experiment {experiment!r} has finished runs")
    raise InputError(f"--parent: {which} (the newest is "
                     f"{parents[0].info.run_id}); let one finish, or name a sweep's parent run with --parent <run id>.")


def run_from_record(path: Path, keys: list[str], reference_text: str | None, metrics, out: Path) -> str:
    """The comparison (and the heatmap of final means over two keys) again from a record's values,
    without MLflow: the same record and options give the same comparison.csv to the last bit."""
    try:
        values, record_keys = record.read_observations(path)
    except FileNotFoundError:
        raise InputError(f"--record: no file {path}; give the runs.csv that a report or a sweep summary wrote.") from None
    except ValueError as error:
        raise InputError(f"--record: {error}") from None
    keys = keys or record_keys
    if set(keys) - set(record_keys):
        raise InputError(f"--by: {', '.join(sorted(set(keys) - set(record_keys)))} is not a column of {path}; "
                         f"its grouping keys are: {', '.join(record_keys) or 'none'}.")
    values = [value for value in values if value.metric in metrics]  # other keys: grouped apart, or refused (PooledKeys)
    if not values:
        raise InputError(f"--metrics: {path} holds no values of {', '.join(metrics)}.")
    reference = parse_reference(reference_text, keys)
    clear_earlier_report(out, RECORD_REPORT_FILES)  # never the record itself, nor a study's other files
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows = sweep_report.seed_comparison(values, keys, metrics, reference, out)
    except ValueError as error:
        raise InputError(f"{'--by' if isinstance(error, comparison.PooledKeys) else '--reference'}: {error}") from None
    written = ["comparison.csv/.md", "comparison_<metric>.png"]
    if len(keys) == 2 and scores.FID in metrics:
        last = {}  # (group, seed) -> (epoch, value) of the last evaluated epoch
        for value in values:
            run = (tuple(value.group.items()), value.seed)
            if value.metric == scores.FID and value.epoch >= last.get(run, (-1, None))[0]:
                last[run] = (value.epoch, value.value)
        finals = [{**dict(group), scores.FID: fid} for (group, _), (_, fid) in last.items()]
        written.append(sweep_report.heatmap(finals, keys, scores.FID, out).name)
    groups = len({row.group for row in rows})
    return f"{len(values)} values of {groups} groups from {path}; written to {out}/ ({', '.join(written)})"


# What a report writes into --out (globs): an earlier report's files, removed before a new one is written.
REPORT_FILES = ("comparison.csv", "comparison.md", "comparison_*.png", sweep_report.RECORD, "scores.md", "scores.csv",
                "sweep_summary.csv", "sweep_summary.md", "sweep_heatmap_*.png", "sweep_curves_*.png", sweep_report.MONTAGE,
                sweep_report.VARIANCE, "variance_split.md", "samples.png", "samples_*.png")


# What a report from a record (--record) writes: only these are replaced, so regenerating a published
# study in its own folder (docs/study) keeps its runs.csv, scores and sweep summary.
RECORD_REPORT_FILES = ("comparison.csv", "comparison.md", "comparison_*.png", "sweep_heatmap_*.png")


def clear_earlier_report(out: Path, patterns=REPORT_FILES) -> None:
    """Remove the files an earlier report left in `out` (only those: a user's own files stay)."""
    if out.is_dir():
        for pattern in patterns:
            for path in out.glob(pattern):
                if path.is_file():
                    path.unlink()


def check_out(out: Path) -> None:
    """--out must be (or be creatable as) a folder: checked before anything is written."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"--out: {str(folder)!r} is a file, not a folder; give a folder for the report.")
            return


def check_by(keys: list[str], children) -> None:
    """Every --by key must be a param of the sweep's runs (else every run would group as `key=`)."""
    params = sorted({name for child in children for name in child.data.params})
    unknown = [key for key in keys if key not in params]
    if unknown:
        raise InputError(f"--by: {', '.join(unknown)} is not a param of the sweep's runs; they have: "
                         f"{', '.join(params) or 'none'}.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    created = not Path(args.out).exists()
    status = report_or_refuse(lambda: run(args))
    if status != 0 and created:  # a refused report leaves no --out folder behind
        shutil.rmtree(args.out, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

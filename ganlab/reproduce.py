"""Rerun the baseline and say whether it reproduces its record: `python -m ganlab.reproduce`.

    python -m ganlab.reproduce --seeds 0 --epochs 1 --data ../shared/data/mnist.npz
    python -m ganlab.reproduce --write-record docs/baseline --tracking-uri sqlite:////abs/mlruns/mlflow.db \\
        --experiment baseline [--parent RUN_ID]          # a finished baseline sweep -> the record
    python -m ganlab.reproduce --write-table docs/baseline   # table.md again from runs.csv

Why: a GAN's numbers repeat bit for bit only on the same kind of CPU (its ISA flags pick
oneDNN's kernels), with the same versions of the packages that compute them and the same
thread count. The record in docs/baseline/ (`ganlab.baseline.record`) says what the baseline gave
and where it ran; this command trains the baseline again for `--seeds` and `--epochs` (with
the record's threads per job) as one Hydra sweep through the real CLI, so the sweep's
parent is an MLflow run of its own (experiment `reproduce`), reads the jobs back
(`ganlab.baseline.readback`) and prints one verdict per seed (`ganlab.baseline.verdict`): exact, consistent
or differs. Exit status 0 when every seed is exact or consistent, 1 when one differs, 2 for
bad input.

Every compared value (this run's, the record seed's, the relative difference, the record
seeds' mean and spread, z) is logged on the sweep's parent run as `reproduce/checks.csv`
and `reproduce/checks.md`, with the tag `reproduce.verdict`.

This module parses the options and runs the steps; each step's work lives in the modules named.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ganlab.tracking import store as tracking
from ganlab.baseline.record import RECORD_DIR, Record, read_baseline, write_table
from ganlab.core.config import DTYPES
from ganlab.core.errors import InputError
from ganlab.baseline.readback import read_job, record_sweep
from ganlab.core.record import DTYPE
from ganlab.baseline.verdict import CHECKS_CSV, CHECKS_MD, DIFFERS, JobResult, SeedVerdict, judge, overall, write_checks

EXPERIMENT = "reproduce"
ARTIFACT_DIR = "reproduce"  # the checks' folder on the sweep's parent run


@dataclass
class Plan:
    seeds: list[int]
    epochs: int
    dtype: str
    data: str | None


def check_options(args, record: Record) -> Plan:
    """Check the options against the record; InputError naming the option and what is valid."""
    if args.dtype not in record.dtypes():
        raise InputError(f"--precision: got {args.dtype!r}; valid: {', '.join(DTYPES)}, and the record has "
                         f"{', '.join(record.dtypes())}.")
    recorded = record.seeds(args.dtype)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else recorded
    except ValueError:
        raise InputError(f"--seeds: got {args.seeds!r}; expected comma-separated seeds of the record "
                         f"({','.join(map(str, recorded))}).") from None
    unknown = [seed for seed in seeds if seed not in recorded]
    if unknown or not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: got {args.seeds!r}; the record's {args.dtype} seeds are "
                         f"{','.join(map(str, recorded))} (each at most once).")
    last = record.epochs(args.dtype)[-1]
    if not 1 <= args.epochs <= last:
        raise InputError(f"--epochs: got {args.epochs}; valid: 1 to {last}, the epochs the record holds.")
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise InputError(f"--data: {args.data!r} does not exist; give MNIST as a .npz in Keras layout or an IDX "
                         "folder, or leave it out for keras.datasets.")
    data = None if args.data is None else str(Path(args.data).expanduser().resolve())
    return Plan(seeds, args.epochs, args.dtype, data)


def sweep_command(planned: Plan, record: Record, uri: str | None, experiment: str, sweep_dir: Path) -> list[str]:
    """The baseline as one sweep of `ganlab.train`: the record's overrides and threads per job, these seeds."""
    command = [sys.executable, "-m", "ganlab.train", "-m", *record.machine.get("overrides", []),
               f"seed={','.join(map(str, planned.seeds))}", f"epochs={planned.epochs}", f"{DTYPE}={planned.dtype}",
               f"threads={record.machine.get('threads') or 1}", f"tracking.experiment={experiment}",
               f"hydra.sweep.dir={sweep_dir}"]
    if uri:
        command.append(f"tracking.uri={uri}")
    if planned.data:
        command.append(f"data.path={planned.data}")
    return command


class ReproductionFailed(RuntimeError):
    """The sweep did not start or left no runs to compare."""


def run_reproduction(planned: Plan, record: Record, uri: str | None, experiment: str) -> str:
    """Train the jobs (output streams to the console); return the sweep's parent run id."""
    from ganlab.sweeps import sweep

    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    sweep_dir = (Path.cwd() / "outputs" / "reproduce" / stamp).resolve()
    command = sweep_command(planned, record, uri, experiment, sweep_dir)
    print("ganlab.reproduce: " + " ".join(command[1:]), flush=True)
    finished = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    parent = sweep.read_sweep_file(sweep_dir).get("parent_run_id")
    if parent is None:
        raise ReproductionFailed(f"the reproduction sweep (exit status {finished.returncode}) left no MLflow parent run "
                                 f"in {sweep_dir}; see its output above.")
    return parent


def read_reproduction(client, parent: str, planned: Plan) -> list[JobResult]:
    experiment_id = tracking.find_run(client, parent, option="--compare-run").info.experiment_id
    _, children = tracking.sweep_children(client, experiment_id, parent)
    jobs = [read_job(client, child) for child in children]
    by_seed = {job.seed: job for job in jobs if job.dtype == planned.dtype}
    missing = [seed for seed in planned.seeds if seed not in by_seed]
    if missing:
        found = ", ".join(f"seed {job.seed} {job.dtype}" for job in jobs) or "no jobs"
        raise ReproductionFailed(f"the sweep {parent} has no {planned.dtype} job of seed "
                                 f"{', '.join(map(str, missing))} (it has {found}).")
    return [by_seed[seed] for seed in planned.seeds]


def report(verdicts: list[SeedVerdict], record: Record, planned: Plan) -> str:
    machine = record.machine
    differences = {name for verdict in verdicts for name in verdict.differences}
    if differences:
        environment = f"differs from the record in: {', '.join(sorted(differences))}"
    else:
        environment = (f"same ISA ({' '.join(machine.get('isa', [])) or 'none'}), versions and threads "
                       f"({machine.get('threads')}) as the record")
    lines = ["", f"ganlab.reproduce: {planned.dtype}, seeds {','.join(map(str, planned.seeds))}, {planned.epochs} "
                 f"epoch{'s' if planned.epochs != 1 else ''}, against the record in {record.folder} "
                 f"(made {machine.get('date')} on {machine.get('cpu_model')}, commit {str(machine.get('git_commit'))[:7]})",
             f"environment: {environment}"]
    lines += [verdict.line() for verdict in verdicts]
    lines.append(f"verdict: {overall(verdicts)}")
    return "\n".join(lines)


def log_on_parent(client, parent: str, verdicts: list[SeedVerdict], record: Record) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for path in write_checks(verdicts, Path(scratch)):
            client.log_artifact(parent, str(path), ARTIFACT_DIR)
    tags = {"reproduce.verdict": overall(verdicts), "reproduce.record": str(record.folder),
            "reproduce.record_commit": str(record.machine.get("git_commit")),
            "reproduce.differs_in": ",".join(sorted({name for v in verdicts for name in v.differences})) or "nothing"}
    tags.update({f"reproduce.seed{verdict.seed}": verdict.verdict for verdict in verdicts})
    for key, value in tags.items():
        client.set_tag(parent, key, value)


def reproduce(args) -> int:
    record = read_baseline(Path(args.record))
    planned = check_options(args, record)
    parent = args.compare_run or run_reproduction(planned, record, args.tracking_uri, args.experiment)
    client, _ = tracking.open_reader(args.tracking_uri)
    verdicts = [judge(job, record, planned.epochs) for job in read_reproduction(client, parent, planned)]
    log_on_parent(client, parent, verdicts, record)
    print(report(verdicts, record, planned))
    print(f"every compared value: {ARTIFACT_DIR}/{CHECKS_CSV} and {CHECKS_MD} of MLflow run {parent}")
    print(tracking.ui_hint(args.tracking_uri, client.get_run(parent).info.experiment_id, parent), flush=True)
    return 1 if overall(verdicts) == DIFFERS else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m ganlab.reproduce", description=__doc__.splitlines()[0],
        epilog="exit status: 0 every seed exact or consistent, 1 a seed differs (or its job failed), 2 bad input.")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds of the record, e.g. 0,1,2 (default: all of them)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to train and compare (default 1)")
    parser.add_argument("--precision", dest="dtype", default=DTYPES[0],
                        help=f"{' or '.join(DTYPES)}: the dtype to reproduce (default {DTYPES[0]})")
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: keras.datasets, else the shipped MNIST copy)")
    parser.add_argument("--record", default=str(RECORD_DIR), help="the record folder (default: this repo's docs/baseline)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<cwd>/mlruns/mlflow.db")
    parser.add_argument("--experiment", default=None,
                        help=f"MLflow experiment: of the reproduction (default {EXPERIMENT}), or with --write-record "
                             "of the baseline sweep (default baseline)")
    parser.add_argument("--compare-run", default=None, metavar="PARENT_RUN_ID",
                        help="compare an earlier reproduction (its sweep's parent run) again instead of training")
    parser.add_argument("--write-record", default=None, metavar="DIR",
                        help="write a record (runs.csv, machine.json, table.md) into DIR from a finished baseline sweep")
    parser.add_argument("--parent", default=None, help="with --write-record: the sweep's parent run id (default: the newest sweep)")
    parser.add_argument("--write-table", default=None, metavar="DIR", help="write DIR/table.md again from DIR/runs.csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.write_record:
            print(record_sweep(Path(args.write_record), args.tracking_uri, args.experiment or "baseline", args.parent))
            return 0
        if args.write_table:
            print(write_table(Path(args.write_table)), end="")
            return 0
        args.experiment = args.experiment or EXPERIMENT
        return reproduce(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ReproductionFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

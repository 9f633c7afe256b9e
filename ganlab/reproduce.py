"""Rerun the baseline and say whether it reproduces its record: `python -m ganlab.reproduce`.

    python -m ganlab.reproduce --seeds 0 --epochs 1 --data ../shared/data/mnist.npz
    python -m ganlab.reproduce --write-record docs/baseline --tracking-uri sqlite:////abs/mlruns/mlflow.db \\
        --experiment baseline [--parent RUN_ID]          # a finished baseline sweep -> the record
    python -m ganlab.reproduce --write-table docs/baseline   # table.md again from runs.csv

Why: a GAN's numbers repeat bit for bit only on the same kind of CPU (its ISA flags pick
oneDNN's kernels), with the same versions of the packages that compute them and the same
thread count. The record in docs/baseline/ says what the baseline gave and where it ran;
this command trains the baseline again for `--seeds` and `--epochs` (threads=1, as the
record) as one Hydra sweep through the real CLI, so the sweep's parent is an MLflow run
of its own (experiment `reproduce`), reads the jobs back and prints one verdict per seed:

- **exact**: same ISA flags, same versions of NUMERIC_PACKAGES, same threads and data as
  the record, and the first RECORDED_STEPS per-step losses equal the record's while every
  recorded value at every compared epoch is within EXACT_RTOL (relative). On that machine
  any other difference is a real change: **differs**.
- **consistent**: something of ISA / versions / threads / data differs, and every score
  (scores.SCORE_NAMES) at every compared epoch lies within the record's seed spread:
  z = (value - mean of the record's seeds) / spread, |z| <= Z_LIMIT, where spread is the
  seeds' standard deviation (ddof 1) at that epoch, but never below the score's pooled
  seed spread over all the record's epochs (so a score every seed put at exactly 0 at
  epoch 1, such as recall, does not make any non-zero value "differ"). This is a z-score,
  not a t-test: the rerun seeds are the record's own, so their values sit among the
  record's rather than being fresh draws.
- **differs** otherwise: the command exits 1 (0 when every seed is exact or consistent,
  2 for bad input). It also says which of ISA / versions / threads / data differ.

The comparison table (every compared value: this run's, the record seed's, the relative
difference, the record seeds' mean and spread, z) is logged on the sweep's parent run as
`reproduce/comparison.csv` and `reproduce/comparison.md`, with the tag `reproduce.verdict`.

The record (folder `--record`, default docs/baseline beside this package):
- runs.csv, columns `precision,seed,epoch,metric,value`: `precision` is the job's dtype
  (fp32|bf16; the issue's name for it, not the k-NN score); one row per value of every
  score and training metric (EPOCH_METRICS) at every evaluated epoch, values at full
  precision (repr); and the first RECORDED_STEPS per-step losses of every seed as metrics
  `step_d_loss` / `step_g_loss`, whose `epoch` column holds the global step (1-based).
- machine.json: the CPU model, its ISA flags, cores, threads per job, accelerator, the git
  commit, python and package versions (read from the runs' own tags), data sha256, the
  date, the seeds, epochs and steps per epoch, and `overrides`: the record's command-line
  overrides besides seed / epochs / dtype / threads / data / tracking (e.g.
  `experiment=baseline`), which a reproduction applies again.
- table.md: the README's baseline table and bf16 verdict, rendered from runs.csv and
  machine.json by `baseline_table` (never typed by hand).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ganlab import scores, tracking
from ganlab.errors import InputError

RECORD_DIR = Path(__file__).resolve().parent.parent / "docs" / "baseline"
RUNS_CSV, MACHINE_JSON, TABLE_MD = "runs.csv", "machine.json", "table.md"
PRECISION_COLUMN = "precision"  # the record's dtype column, as the issue names it (not the k-NN score)
CSV_COLUMNS = (PRECISION_COLUMN, "seed", "epoch", "metric", "value")
DTYPES = ("fp32", "bf16")
DTYPE_PARAMS = ("dtype", PRECISION_COLUMN)  # the knob's name now, and in code older than the rename
EPOCH_METRICS = (*scores.SCORE_NAMES, *scores.TRAINING_NAMES)
NOT_EXACT = (scores.STEPS_PER_SEC,)  # a timing: never the same twice
STEP_PREFIX = "step_"
RECORDED_STEPS = 20
LOSSES_FILE = "losses.csv"  # every job's per-step losses: epoch,step,d_loss,g_loss
NUMERIC_PACKAGES = ("tensorflow", "keras", "numpy", "scipy")  # their versions change the numbers
EXACT_RTOL = 1e-6
Z_LIMIT = 3.0
EXACT, CONSISTENT, DIFFERS = "exact", "consistent", "differs"
# Overrides that a reproduction sets itself; the record's other overrides are applied again.
OWN_KEYS = ("seed", "epochs", "threads", "data.path", "resume", *DTYPE_PARAMS)
OWN_PREFIXES = ("tracking.", "hydra.", "hydra/")
TABLE_EPOCHS = (1, 5, 10, 15, 20, 25)
EXPERIMENT = "reproduce"


def step_metric(name: str) -> str:
    return STEP_PREFIX + name


STEP_METRICS = (step_metric(scores.D_LOSS), step_metric(scores.G_LOSS))


# --------------------------------------------------------------------------- the record


@dataclass
class Record:
    """runs.csv and machine.json of one record: values[(precision, seed, metric, epoch)] = value."""

    machine: dict
    values: dict[tuple[str, int, str, int], float]
    folder: Path | None = None

    def precisions(self) -> list[str]:
        found = {key[0] for key in self.values}
        return [dtype for dtype in DTYPES if dtype in found] + sorted(found - set(DTYPES))

    def seeds(self, precision: str) -> list[int]:
        return sorted({seed for dtype, seed, _, _ in self.values if dtype == precision})

    def epochs(self, precision: str) -> list[int]:
        return sorted({epoch for dtype, _, metric, epoch in self.values if dtype == precision and not is_step(metric)})

    def across_seeds(self, precision: str, metric: str, epoch: int) -> list[float]:
        return [self.values[key] for seed in self.seeds(precision)
                if (key := (precision, seed, metric, epoch)) in self.values]


def is_step(metric: str) -> bool:
    return metric.startswith(STEP_PREFIX)


def read_record(folder: Path) -> Record:
    """The record in `folder`; InputError if a file is missing or malformed."""
    folder = Path(folder)
    runs, machine = folder / RUNS_CSV, folder / MACHINE_JSON
    for path in (runs, machine):
        if not path.is_file():
            raise InputError(f"--record: {str(path)!r} does not exist. Name a record folder holding {RUNS_CSV} and "
                             f"{MACHINE_JSON} (the repo's is docs/baseline), or make one with --write-record.")
    try:
        info = json.loads(machine.read_text())
        with open(runs, newline="") as stream:
            reader = csv.DictReader(stream)
            if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
                raise ValueError(f"columns {reader.fieldnames}, expected {','.join(CSV_COLUMNS)}")
            values = {(row[PRECISION_COLUMN], int(row["seed"]), row["metric"], int(row["epoch"])): float(row["value"])
                      for row in reader}
    except (ValueError, KeyError) as error:
        raise InputError(f"--record: {folder} is not a readable record ({type(error).__name__}: {error}).") from None
    if not values:
        raise InputError(f"--record: {runs} holds no values.")
    return Record(info, values, folder.resolve())


def write_runs_csv(values: dict, path: Path) -> Path:
    """runs.csv: one row per value, sorted by precision, seed, then the epoch rows before the step rows."""
    metric_order = {name: index for index, name in enumerate((*EPOCH_METRICS, *STEP_METRICS))}

    def order(key):
        dtype, seed, metric, epoch = key
        dtype_order = DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES)
        return dtype_order, dtype, seed, is_step(metric), epoch, metric_order.get(metric, len(metric_order)), metric

    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for key in sorted(values, key=order):
            dtype, seed, metric, epoch = key
            writer.writerow([dtype, seed, epoch, metric, repr(float(values[key]))])
    return path


# --------------------------------------------------------------------------- jobs read back from MLflow


@dataclass
class JobResult:
    """One job's numbers and where it ran, independent of MLflow (so the verdict is testable alone).

    values[(metric, epoch)] at evaluated epochs; steps[(step metric, step)] for the first
    RECORDED_STEPS steps; environment as in machine.json (isa, threads, versions, ...)."""

    seed: int
    precision: str
    values: dict[tuple[str, int], float]
    steps: dict[tuple[str, int], float]
    environment: dict
    status: str = "FINISHED"
    failure: str = ""
    run_id: str = ""


def run_precision(run) -> str | None:
    return next((run.data.params[name] for name in DTYPE_PARAMS if name in run.data.params), None)


def read_job(client, run) -> JobResult:
    """A finished (or failed) job's evaluated epochs, first per-step losses and environment."""
    histories = tracking.metric_histories(client, run.info.run_id, EPOCH_METRICS)
    evaluated = {epoch for name in scores.SCORE_NAMES for epoch in histories[name]}
    if not evaluated:  # evaluation off: every epoch that logged anything
        evaluated = {epoch for history in histories.values() for epoch in history}
    values = {(name, epoch): value for name, history in histories.items() for epoch, value in history.items()
              if epoch in evaluated}
    return JobResult(seed=int(run.data.params.get("seed", -1)), precision=run_precision(run) or "?", values=values,
                     steps=_first_steps(client, run.info.run_id), environment=run_environment(run),
                     status=run.info.status, failure=run.data.tags.get("failure_reason", ""), run_id=run.info.run_id)


def _first_steps(client, run_id: str) -> dict[tuple[str, int], float]:
    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = client.download_artifacts(run_id, LOSSES_FILE, scratch)
        except Exception:  # noqa: BLE001  a job that died before writing it
            return {}
        with open(local, newline="") as stream:
            rows = list(csv.DictReader(stream))
    steps = {}
    for row in rows:
        step = int(float(row["step"]))
        if step <= RECORDED_STEPS:
            for name in (scores.D_LOSS, scores.G_LOSS):
                steps[(step_metric(name), step)] = float(row[name])
    return steps


def run_environment(run, fallback: dict | None = None) -> dict:
    """Where a run ran, from its own tags and params; `fallback` (this machine) for the tags it lacks."""
    tags, params = run.data.tags, run.data.params
    fallback = fallback or {}

    def tag(name: str, default=None):
        return tags.get(name, fallback.get(name.split(".", 1)[-1], default))

    isa = tag("machine.isa", "")
    isa = isa if isinstance(isa, list) else [flag for flag in isa.split() if flag != "none"]
    return {
        "cpu_model": tag("machine.cpu_model", "unknown"),
        "isa": isa,
        "cores": _as_int(tag("machine.cores")),
        "threads": _as_int(params.get("threads", tags.get("machine.threads"))),
        "accelerator": tag("machine.accelerator", "unknown"),
        "git_commit": tags.get("git.commit", "unknown"),
        "git_dirty": tags.get("git.dirty", "unknown"),
        "python": tags.get("version.python", "unknown"),
        "versions": {package: tags.get(f"version.{package}", fallback.get("versions", {}).get(package, "unknown"))
                     for package in tracking.PACKAGES},
        "data_sha256": tags.get("data.sha256", "unknown"),
    }


def _as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def this_machine() -> dict:
    """This machine's facts in run_environment's shape (for runs made before machine tags existed)."""
    from importlib import metadata

    from ganlab import machine

    facts = machine.describe()
    versions = {}
    for package in tracking.PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {**facts, "isa": machine.isa_flags(), "cores": int(facts["cores"]), "versions": versions}


# --------------------------------------------------------------------------- writing a record


def record_overrides(overrides: str) -> list[str]:
    """A job's overrides without those a reproduction sets itself (seed, epochs, dtype, ...)."""
    kept = []
    for item in overrides.split():
        key = item.partition("=")[0].lstrip("+~")
        if key not in OWN_KEYS and not key.startswith(OWN_PREFIXES):
            kept.append(item)
    return kept


def write_record(folder: Path, uri: str | None, experiment: str, parent: str | None) -> str:
    """A finished sweep of the baseline (seeds x dtypes) -> runs.csv, machine.json and table.md in `folder`.

    Commit, versions and data come from the runs' own tags; the CPU facts too where the
    runs have machine.* tags, else from this machine (then run this where the sweep ran)."""
    client, experiment_id = tracking.open_reader(uri, experiment)
    parent, children = tracking.sweep_children(client, experiment_id, parent)
    if not children:
        raise InputError(f"--parent: run {parent} has no child runs; name the parent run of a finished baseline sweep.")
    unfinished = [child for child in children if child.info.status != "FINISHED"]
    if unfinished:
        listed = ", ".join(f"{child.info.run_id} ({child.info.status})" for child in unfinished)
        raise InputError(f"--parent: every job of the sweep must have finished to make a record; these have not: {listed}.")
    here = this_machine()
    environments = [run_environment(child, fallback=here) for child in children]
    _check_same(children, environments)
    values = {}
    seeds: dict[str, list[int]] = {}
    for child in children:
        job = read_job(client, child)
        seeds.setdefault(job.precision, []).append(job.seed)
        values.update({(job.precision, job.seed, metric, epoch): value for (metric, epoch), value in job.values.items()})
        values.update({(job.precision, job.seed, metric, step): value for (metric, step), value in job.steps.items()})
    first = children[0]
    machine = {**environments[0]}
    notes = []
    if "machine.isa" not in first.data.tags:
        notes.append("cpu_model, isa, cores and accelerator are those of the machine that wrote this record: "
                     "the runs predate machine tags and ran there.")
    missing = [package for package in NUMERIC_PACKAGES if f"version.{package}" not in first.data.tags]
    if missing:
        notes.append(f"versions of {', '.join(missing)} are those installed where this record was written: "
                     "the runs have no tag for them.")
    started = client.get_run(parent).info.start_time
    machine.update({
        "date": datetime.datetime.fromtimestamp(started / 1000, datetime.timezone.utc).strftime("%Y-%m-%d"),
        "data_source": first.data.tags.get("data.source", "unknown"),
        "eval_classifier_sha256": first.data.tags.get("eval.classifier_sha256", "unknown"),
        "overrides": record_overrides(first.data.tags.get("hydra.overrides", "")),
        "seeds": {dtype: sorted(found) for dtype, found in seeds.items()},
        "epochs": _as_int(first.data.params.get("epochs")),
        "steps_per_epoch": _as_int(first.data.params.get("steps_per_epoch_resolved", first.data.params.get("steps_per_epoch"))),
        "source": {"tracking_uri": tracking.resolve_uri(uri), "experiment": experiment, "parent_run_id": parent},
        "notes": notes,
    })
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_runs_csv(values, folder / RUNS_CSV)
    (folder / MACHINE_JSON).write_text(json.dumps(machine, indent=2) + "\n")
    table = write_table(folder)
    return (f"record of sweep {parent} ({len(children)} jobs) written to {folder}/: {RUNS_CSV} ({len(values)} values), "
            f"{MACHINE_JSON}, {TABLE_MD}\n\n{table}")


def _check_same(children, environments) -> None:
    """A record describes one machine, one version set, one config: refuse a mixed sweep."""
    facts = {
        "git commit": [env["git_commit"] for env in environments],
        "versions": [json.dumps(env["versions"], sort_keys=True) for env in environments],
        "threads": [str(env["threads"]) for env in environments],
        "data": [env["data_sha256"] for env in environments],
        "ISA": [" ".join(env["isa"]) for env in environments],
        "overrides": [" ".join(record_overrides(child.data.tags.get("hydra.overrides", ""))) for child in children],
        "epochs": [child.data.params.get("epochs") for child in children],
    }
    mixed = [name for name, found in facts.items() if len(set(found)) > 1]
    if mixed:
        raise InputError(f"--parent: the sweep's jobs differ in {', '.join(mixed)}; a record needs jobs that differ "
                         "only in seed and dtype.")


# --------------------------------------------------------------------------- the README's table


def baseline_table(record: Record) -> str:
    """Markdown: fp32's headline scores (mean ± std over seeds) at TABLE_EPOCHS, and the bf16 verdict."""
    machine = record.machine
    reference = DTYPES[0] if DTYPES[0] in record.precisions() else record.precisions()[0]
    seeds = record.seeds(reference)
    recorded = record.epochs(reference)
    epochs = sorted({epoch for epoch in TABLE_EPOCHS if epoch in recorded} | {recorded[-1]})
    lines = [f"Baseline, {reference}: mean ± std over seeds {', '.join(map(str, seeds))} "
             f"(generated from docs/baseline/{RUNS_CSV} by `python -m ganlab.reproduce --write-table docs/baseline`).", "",
             "| epoch | " + " | ".join(scores.HEADLINE) + " |", "|---" * (len(scores.HEADLINE) + 1) + "|"]
    for epoch in epochs:
        cells = []
        for metric in scores.HEADLINE:
            found = record.across_seeds(reference, metric, epoch)
            std = statistics.stdev(found) if len(found) > 1 else 0.0
            cells.append(f"{statistics.fmean(found):.3g} ± {std:.2g}" if found else "-")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += ["", _bf16_verdict(record, reference), "",
              f"Made on {machine.get('cpu_model', 'an unknown CPU')} (ISA: {' '.join(machine.get('isa', [])) or 'none'}), "
              f"{machine.get('threads')} thread per job, TensorFlow {machine.get('versions', {}).get('tensorflow')}, "
              f"commit {str(machine.get('git_commit'))[:7]}. Exact numbers, speeds and so the bf16 verdict depend on the "
              "CPU; check yours with `python -m ganlab.reproduce --seeds 0 --epochs 1`."]
    return "\n".join(lines) + "\n"


def _bf16_verdict(record: Record, reference: str) -> str:
    other = next((dtype for dtype in record.precisions() if dtype != reference), None)
    if other is None:
        return f"**bf16 verdict**: the record has no {DTYPES[1]} runs."
    from ganlab import comparison

    epoch = max(set(record.epochs(reference)) & set(record.epochs(other)))
    ours, theirs = record.across_seeds(other, scores.FID, epoch), record.across_seeds(reference, scores.FID, epoch)
    difference = comparison.welch(ours, theirs)
    if math.isnan(difference.ci_low):
        quality = f"{scores.FID} cannot be told apart from seed noise with so few seeds"
    elif difference.ci_low > 0 or difference.ci_high < 0:
        better = (difference.diff < 0) == (scores.direction(scores.FID) == scores.LOWER)
        quality = f"{other} is clearly {'better' if better else 'worse'} in {scores.FID}"
    else:
        quality = f"no clear difference in {scores.FID} (within seed noise)"
    interval = "" if math.isnan(difference.ci_low) else (
        f", 95% CI {difference.ci_low:+.3g} to {difference.ci_high:+.3g}, Welch p={difference.p_value:.2g}")
    speed_ours, speed_theirs = _mean_speed(record, other), _mean_speed(record, reference)
    ratio = speed_ours / speed_theirs
    return (f"**bf16 verdict** (computed from the record): at epoch {epoch}, {other} reaches {scores.FID} "
            f"{statistics.fmean(ours):.3g} ± {_std(ours):.2g} against {reference}'s {statistics.fmean(theirs):.3g} ± "
            f"{_std(theirs):.2g} (difference {difference.diff:+.3g}{interval}): {quality}. On this CPU {other} trains "
            f"{'slower' if ratio < 1 else 'faster'} than {reference}: {speed_ours:.3g} against {speed_theirs:.3g} "
            f"steps/s ({ratio:.2f}x; mean over seeds and epochs{', the first left out' if len(record.epochs(other)) > 1 else ''}).")


def _std(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_speed(record: Record, precision: str) -> float:
    """Mean steps/s over seeds and epochs, the first epoch (which traces the step) left out when there are more."""
    epochs = record.epochs(precision)
    epochs = epochs[1:] if len(epochs) > 1 else epochs
    return statistics.fmean(value for epoch in epochs for value in record.across_seeds(precision, scores.STEPS_PER_SEC, epoch))


def write_table(folder: Path) -> str:
    table = baseline_table(read_record(folder))
    (Path(folder) / TABLE_MD).write_text(table)
    return table


# --------------------------------------------------------------------------- the verdict


@dataclass
class Check:
    """One compared value of one seed. `epoch` is the step for step metrics (as in runs.csv)."""

    seed: int
    epoch: int
    metric: str
    value: float | None
    record: float | None  # the same seed's value in the record
    rel_diff: float | None
    exact: bool
    mean: float | None = None  # of the record's seeds (scores only)
    spread: float | None = None
    z: float | None = None
    within: bool | None = None  # |z| <= Z_LIMIT (scores only)


@dataclass
class SeedVerdict:
    seed: int
    verdict: str
    reason: str
    differences: list[str] = field(default_factory=list)  # of ISA / versions / threads / data
    checks: list[Check] = field(default_factory=list)

    def line(self) -> str:
        return f"seed {self.seed}: {self.verdict} - {self.reason}"


def environment_differences(record_env: dict, env: dict) -> dict[str, str]:
    """{"ISA" | "versions" | "threads" | "data": what differs} between the record's machine and a job's."""
    found = {}
    if set(record_env.get("isa", [])) != set(env.get("isa", [])):
        found["ISA"] = f"{' '.join(env.get('isa', [])) or 'none'} here, {' '.join(record_env.get('isa', [])) or 'none'} in the record"
    versions = [f"{package} {env['versions'].get(package)} here, {record_env['versions'].get(package)} in the record"
                for package in NUMERIC_PACKAGES
                if env.get("versions", {}).get(package) != record_env.get("versions", {}).get(package)]
    if versions:
        found["versions"] = "; ".join(versions)
    if str(env.get("threads")) != str(record_env.get("threads")):
        found["threads"] = f"{env.get('threads')} here, {record_env.get('threads')} in the record"
    if env.get("data_sha256") != record_env.get("data_sha256"):
        found["data"] = f"sha256 {str(env.get('data_sha256'))[:12]} here, {str(record_env.get('data_sha256'))[:12]} in the record"
    return found


def relative_difference(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def seed_spread(record: Record, precision: str, metric: str, epoch: int) -> tuple[float, float]:
    """(mean, spread) of the record's seeds at `epoch`: the std (ddof 1), at least the pooled
    std of `metric` over all the record's epochs. NaN spread with fewer than 2 seeds."""
    found = record.across_seeds(precision, metric, epoch)
    mean = statistics.fmean(found) if found else math.nan
    if len(found) < 2:
        return mean, math.nan
    variances = [statistics.variance(values) for other in record.epochs(precision)
                 if len(values := record.across_seeds(precision, metric, other)) > 1]
    pooled = math.sqrt(statistics.fmean(variances))
    return mean, max(statistics.stdev(found), pooled)


def z_score(value: float, mean: float, spread: float) -> float:
    if math.isnan(spread) or math.isnan(mean):
        return math.nan
    if spread == 0:
        return 0.0 if relative_difference(value, mean) <= EXACT_RTOL else math.inf
    return (value - mean) / spread


def compare(job: JobResult, record: Record, epochs: int) -> list[Check]:
    """Every recorded value of the job's seed up to `epochs`: per-step losses, then epoch values."""
    checks = []
    precision, seed = job.precision, job.seed
    per_epoch = record.machine.get("steps_per_epoch")
    last_step = epochs * per_epoch if isinstance(per_epoch, int) else math.inf
    for (dtype, recorded_seed, metric, epoch), expected in record.values.items():
        if dtype != precision or recorded_seed != seed or not is_step(metric) or epoch > last_step:
            continue
        value = job.steps.get((metric, epoch))
        checks.append(Check(seed, epoch, metric, value, expected, _rel(value, expected), value == expected))
    for epoch in range(1, epochs + 1):
        for metric in EPOCH_METRICS:
            expected = record.values.get((precision, seed, metric, epoch))
            if expected is None or metric in NOT_EXACT:
                continue
            value = job.values.get((metric, epoch))
            rel = _rel(value, expected)
            check = Check(seed, epoch, metric, value, expected, rel, rel is not None and rel <= EXACT_RTOL)
            if metric in scores.SCORE_NAMES:
                check.mean, check.spread = seed_spread(record, precision, metric, epoch)
                check.z = math.nan if value is None else z_score(value, check.mean, check.spread)
                check.within = not math.isnan(check.z) and abs(check.z) <= Z_LIMIT
            checks.append(check)
    return sorted(checks, key=lambda check: (not is_step(check.metric), check.epoch))


def _rel(value: float | None, expected: float) -> float | None:
    return None if value is None else relative_difference(value, expected)


def judge(job: JobResult, record: Record, epochs: int) -> SeedVerdict:
    """exact, consistent or differs for one seed (see the module's docstring for the rules)."""
    differences = environment_differences(record.machine, job.environment)
    named = list(differences)
    if job.status != "FINISHED":
        return SeedVerdict(job.seed, DIFFERS, f"its job ended {job.status}: {job.failure or 'see its run'}", named)
    checks = compare(job, record, epochs)
    unequal = [check for check in checks if not check.exact]
    span = "epoch 1" if epochs == 1 else f"epochs 1-{epochs}"
    steps = len({check.epoch for check in checks if is_step(check.metric)})
    values = sum(not is_step(check.metric) for check in checks)
    if not differences:
        same = "same ISA, versions, threads and data as the record"
        if not unequal:
            return SeedVerdict(job.seed, EXACT, f"{same}; the losses of its first {steps} steps and all {values} "
                                                f"recorded values of {span} equal the record's", named, checks)
        first = unequal[0]
        code = ""
        if job.environment.get("git_commit") != record.machine.get("git_commit"):
            code = (f"; the code differs (commit {str(job.environment.get('git_commit'))[:7]} here, "
                    f"{str(record.machine.get('git_commit'))[:7]} in the record)")
        return SeedVerdict(job.seed, DIFFERS, f"{same}, yet {_describe_unequal(first)}; {len(unequal)} of {len(checks)} "
                                              f"values differ{code}: a real change", named, checks)
    judged = [check for check in checks if check.within is not None]
    outside = [check for check in judged if not check.within]
    other = f"{', '.join(named)} differ{'s' if len(named) == 1 else ''} from the record ({'; '.join(differences.values())})"
    if not judged:
        return SeedVerdict(job.seed, DIFFERS, f"{other}, and the record has no scores to judge by", named, checks)
    if outside:
        worst = max(outside, key=lambda check: abs(check.z) if not math.isnan(check.z) else math.inf)
        return SeedVerdict(job.seed, DIFFERS, f"{other}; {_describe_outside(worst)}; {len(outside)} of {len(judged)} scores "
                                              f"outside the record's seed spread (|z| <= {Z_LIMIT:g})", named, checks)
    largest = max(judged, key=lambda check: abs(check.z))
    identical = " (its numbers even equal the record's exactly)" if not unequal else ""
    return SeedVerdict(job.seed, CONSISTENT, f"{other}; every score of {span} lies within the record's seed spread "
                                             f"(z-score against {len(record.seeds(job.precision))} seeds, |z| <= "
                                             f"{Z_LIMIT:g}; largest |z| {abs(largest.z):.2f}, {largest.metric} at epoch "
                                             f"{largest.epoch}){identical}", named, checks)


def _describe_unequal(check: Check) -> str:
    where = f"step {check.epoch}" if is_step(check.metric) else f"epoch {check.epoch}"
    if check.value is None:
        return f"{check.metric} at {where} is missing (the record has {check.record!r})"
    return (f"{check.metric} at {where} is {check.value!r} against the record's {check.record!r} "
            f"(relative difference {check.rel_diff:.2g}; exact needs <= {EXACT_RTOL:g})")


def _describe_outside(check: Check) -> str:
    if check.value is None:
        return f"{check.metric} at epoch {check.epoch} is missing"
    if math.isnan(check.z):
        return f"{check.metric} at epoch {check.epoch} cannot be judged: the record has fewer than 2 seeds"
    return (f"{check.metric} at epoch {check.epoch} is {scores.format_value(check.metric, check.value)} against the "
            f"record's seeds {check.mean:.4g} ± {check.spread:.2g} (z = {check.z:.2f})")


def overall(verdicts: list[SeedVerdict]) -> str:
    found = {verdict.verdict for verdict in verdicts}
    return DIFFERS if DIFFERS in found or not verdicts else CONSISTENT if CONSISTENT in found else EXACT


# --------------------------------------------------------------------------- the comparison table

TABLE_COLUMNS = ("seed", "epoch", "metric", "value", "record", "rel_diff", "exact", "record_mean", "record_spread", "z", "within")


def write_comparison(verdicts: list[SeedVerdict], folder: Path) -> list[Path]:
    """comparison.csv (every check, full precision) and comparison.md (verdicts, then the checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [[check.seed, check.epoch, check.metric, check.value, check.record, check.rel_diff, check.exact,
             check.mean, check.spread, check.z, check.within] for verdict in verdicts for check in verdict.checks]
    with open(folder / "comparison.csv", "w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(TABLE_COLUMNS)
        writer.writerows([["" if cell is None else repr(cell) if isinstance(cell, float) else cell for cell in row]
                          for row in rows])
    lines = ["# Reproduction against the record", "", *[f"- {verdict.line()}" for verdict in verdicts], "",
             "`epoch` is the step for step_* rows. z = (value - record seeds' mean) / spread; "
             f"exact needs a relative difference <= {EXACT_RTOL:g}.", "",
             "| " + " | ".join(TABLE_COLUMNS) + " |", "|---" * len(TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    (folder / "comparison.md").write_text("\n".join(lines) + "\n")
    return [folder / "comparison.csv", folder / "comparison.md"]


def _cell(cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float):
        return f"{cell:.6g}" if math.isfinite(cell) else str(cell)
    return str(cell)


# --------------------------------------------------------------------------- the reproduction


@dataclass
class Plan:
    seeds: list[int]
    epochs: int
    precision: str
    data: str | None


def check_options(args, record: Record) -> Plan:
    """Check the options against the record; InputError naming the option and what is valid."""
    if args.precision not in record.precisions():
        raise InputError(f"--precision: got {args.precision!r}; valid: {', '.join(DTYPES)}, and the record has "
                         f"{', '.join(record.precisions())}.")
    recorded = record.seeds(args.precision)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else recorded
    except ValueError:
        raise InputError(f"--seeds: got {args.seeds!r}; expected comma-separated seeds of the record "
                         f"({','.join(map(str, recorded))}).") from None
    unknown = [seed for seed in seeds if seed not in recorded]
    if unknown or not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: got {args.seeds!r}; the record's {args.precision} seeds are "
                         f"{','.join(map(str, recorded))} (each at most once).")
    last = record.epochs(args.precision)[-1]
    if not 1 <= args.epochs <= last:
        raise InputError(f"--epochs: got {args.epochs}; valid: 1 to {last}, the epochs the record holds.")
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise InputError(f"--data: {args.data!r} does not exist; give MNIST as a .npz in Keras layout or an IDX "
                         "folder, or leave it out for keras.datasets.")
    data = None if args.data is None else str(Path(args.data).expanduser().resolve())
    return Plan(seeds, args.epochs, args.precision, data)


def sweep_command(planned: Plan, record: Record, uri: str | None, experiment: str, sweep_dir: Path) -> list[str]:
    """The baseline as one sweep of `ganlab.train`: the record's overrides, these seeds, threads=1."""
    command = [sys.executable, "-m", "ganlab.train", "-m", *record.machine.get("overrides", []),
               f"seed={','.join(map(str, planned.seeds))}", f"epochs={planned.epochs}", f"dtype={planned.precision}",
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
    from ganlab import sweep

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
    by_seed = {job.seed: job for job in jobs if job.precision == planned.precision}
    missing = [seed for seed in planned.seeds if seed not in by_seed]
    if missing:
        found = ", ".join(f"seed {job.seed} {job.precision}" for job in jobs) or "no jobs"
        raise ReproductionFailed(f"the sweep {parent} has no {planned.precision} job of seed "
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
    lines = ["", f"ganlab.reproduce: {planned.precision}, seeds {','.join(map(str, planned.seeds))}, {planned.epochs} "
                 f"epoch{'s' if planned.epochs != 1 else ''}, against the record in {record.folder} "
                 f"(made {machine.get('date')} on {machine.get('cpu_model')}, commit {str(machine.get('git_commit'))[:7]})",
             f"environment: {environment}"]
    lines += [verdict.line() for verdict in verdicts]
    lines.append(f"verdict: {overall(verdicts)}")
    return "\n".join(lines)


def log_on_parent(client, parent: str, verdicts: list[SeedVerdict], record: Record) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for path in write_comparison(verdicts, Path(scratch)):
            client.log_artifact(parent, str(path), "reproduce")
    tags = {"reproduce.verdict": overall(verdicts), "reproduce.record": str(record.folder),
            "reproduce.record_commit": str(record.machine.get("git_commit")),
            "reproduce.differs_in": ",".join(sorted({name for v in verdicts for name in v.differences})) or "nothing"}
    tags.update({f"reproduce.seed{verdict.seed}": verdict.verdict for verdict in verdicts})
    for key, value in tags.items():
        client.set_tag(parent, key, value)


def reproduce(args) -> int:
    record = read_record(Path(args.record))
    planned = check_options(args, record)
    parent = args.compare_run or run_reproduction(planned, record, args.tracking_uri, args.experiment)
    client, _ = tracking.open_reader(args.tracking_uri)
    verdicts = [judge(job, record, planned.epochs) for job in read_reproduction(client, parent, planned)]
    log_on_parent(client, parent, verdicts, record)
    print(report(verdicts, record, planned))
    print(f"comparison table: reproduce/comparison.csv and comparison.md of MLflow run {parent}")
    print(tracking.ui_hint(args.tracking_uri, client.get_run(parent).info.experiment_id, parent), flush=True)
    return 1 if overall(verdicts) == DIFFERS else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m ganlab.reproduce", description=__doc__.splitlines()[0],
        epilog="exit status: 0 every seed exact or consistent, 1 a seed differs (or its job failed), 2 bad input.")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds of the record, e.g. 0,1,2 (default: all of them)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to train and compare (default 1)")
    parser.add_argument("--precision", default=DTYPES[0], help="fp32 or bf16: the dtype to reproduce (default fp32)")
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: keras.datasets)")
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
            print(write_record(Path(args.write_record), args.tracking_uri, args.experiment or "baseline", args.parent))
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

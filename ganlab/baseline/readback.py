"""Baseline jobs read back from MLflow: their numbers and where they ran, and a finished baseline sweep made into a record.

`read_job` turns a job's run into the verdict's `JobResult` (its evaluated epochs, its
first per-step losses from the run's losses.csv, its machine from the run's tags);
`record_sweep` writes a finished sweep of the baseline (seeds x dtypes) as the record in
docs/baseline/ (`ganlab.baseline.record`).
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
import tempfile
from pathlib import Path

from ganlab.core import machine, scores
from ganlab.tracking import store as tracking
from ganlab.tracking.job_run import FAILURE_TAG
from ganlab.baseline.record import (EPOCH_METRICS, MACHINE_JSON, RECORDED_STEPS, RUNS_CSV, TABLE_MD, step_metric,
                             write_baseline)
from ganlab.core.config import WHERE_KEYS
from ganlab.core.errors import InputError
from ganlab.core.record import DTYPE_NAMES
from ganlab.baseline.verdict import NUMERIC_PACKAGES, JobResult

LOSSES_FILE = "losses.csv"  # every job's per-step losses: epoch,step,d_loss,g_loss
# The overrides a reproduction sets itself (where the job runs, the seed, epochs and dtype it
# checks); a record keeps the others (such as experiment=baseline) and a reproduction applies them again.
OWN_KEYS = (*WHERE_KEYS, "seed", "epochs", "resume", *DTYPE_NAMES)
OWN_PREFIXES = ("tracking.", "hydra.", "hydra/")


def run_dtype(run) -> str | None:
    """The run's dtype param, under its name now or the one it had before the rename."""
    return next((run.data.params[name] for name in DTYPE_NAMES if name in run.data.params), None)


def read_job(client, run) -> JobResult:
    """A finished (or failed) job's evaluated epochs, first per-step losses and environment."""
    histories = tracking.metric_histories(client, run.info.run_id, EPOCH_METRICS)
    evaluated = {epoch for name in scores.SCORE_NAMES for epoch in histories[name]}
    if not evaluated:  # evaluation off: every epoch that logged anything
        evaluated = {epoch for history in histories.values() for epoch in history}
    values = {(name, epoch): value for name, history in histories.items() for epoch, value in history.items()
              if epoch in evaluated}
    return JobResult(seed=int(run.data.params.get("seed", -1)), dtype=run_dtype(run) or "?", values=values,
                     steps=_first_steps(client, run.info.run_id), environment=run_environment(run),
                     status=run.info.status, failure=run.data.tags.get(FAILURE_TAG, ""), run_id=run.info.run_id)


def _first_steps(client, run_id: str) -> dict[tuple[str, int], float]:
    """The first RECORDED_STEPS losses from the run's losses.csv; none (its checks then say
    missing) when the job died before writing it, or, with a warning naming it, when it
    cannot be read."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            if LOSSES_FILE not in {item.path for item in client.list_artifacts(run_id)}:
                return {}
            local = client.download_artifacts(run_id, LOSSES_FILE, scratch)
            with open(local, newline="") as stream:
                rows = list(csv.DictReader(stream))
        except Exception as error:  # noqa: BLE001 - whatever the store raises: named, and the steps count as missing
            print(f"warning: could not read artifact {LOSSES_FILE} of run {run_id} ({type(error).__name__}: {error}); "
                  "its per-step losses count as missing.", file=sys.stderr, flush=True)
            return {}
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
                     for package in machine.PACKAGES},
        "data_sha256": tags.get(tracking.DATA_SHA_TAG, "unknown"),
    }


def _as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def this_machine() -> dict:
    """This machine's facts in run_environment's shape (for runs made before machine tags existed)."""
    facts = machine.describe()
    versions = {package: machine.package_version(package) for package in machine.PACKAGES}
    return {**facts, "isa": machine.isa_flags(), "cores": int(facts["cores"]), "versions": versions}


def record_overrides(overrides: str) -> list[str]:
    """A job's overrides without those a reproduction sets itself (seed, epochs, dtype, ...)."""
    kept = []
    for item in overrides.split():
        key = item.partition("=")[0].lstrip("+~")
        if key not in OWN_KEYS and not key.startswith(OWN_PREFIXES):
            kept.append(item)
    return kept


def record_sweep(folder: Path, uri: str | None, experiment: str, parent: str | None) -> str:
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
        seeds.setdefault(job.dtype, []).append(job.seed)
        values.update({(job.dtype, job.seed, metric, epoch): value for (metric, epoch), value in job.values.items()})
        values.update({(job.dtype, job.seed, metric, step): value for (metric, step), value in job.steps.items()})
    first = children[0]
    described = {**environments[0]}
    notes = []
    if "machine.isa" not in first.data.tags:
        notes.append("cpu_model, isa, cores and accelerator are those of the machine that wrote this record: "
                     "the runs predate machine tags and ran there.")
    missing = [package for package in NUMERIC_PACKAGES if f"version.{package}" not in first.data.tags]
    if missing:
        notes.append(f"versions of {', '.join(missing)} are those installed where this record was written: "
                     "the runs have no tag for them.")
    started = client.get_run(parent).info.start_time
    described.update({
        "date": datetime.datetime.fromtimestamp(started / 1000, datetime.timezone.utc).strftime("%Y-%m-%d"),
        "data_source": first.data.tags.get(tracking.DATA_SOURCE_TAG, "unknown"),
        "eval_classifier_sha256": first.data.tags.get(tracking.CLASSIFIER_SHA_TAG, "unknown"),
        "overrides": record_overrides(first.data.tags.get(tracking.OVERRIDES_TAG, "")),
        "seeds": {dtype: sorted(found) for dtype, found in seeds.items()},
        "epochs": _as_int(first.data.params.get("epochs")),
        "steps_per_epoch": _as_int(first.data.params.get("steps_per_epoch_resolved", first.data.params.get("steps_per_epoch"))),
        "source": {"tracking_uri": tracking.resolve_uri(uri), "experiment": experiment, "parent_run_id": parent},
        "notes": notes,
    })
    table = write_baseline(folder, values, described)
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
        "overrides": [" ".join(record_overrides(child.data.tags.get(tracking.OVERRIDES_TAG, ""))) for child in children],
        "epochs": [child.data.params.get("epochs") for child in children],
    }
    mixed = [name for name, found in facts.items() if len(set(found)) > 1]
    if mixed:
        raise InputError(f"--parent: the sweep's jobs differ in {', '.join(mixed)}; a record needs jobs that differ "
                         "only in seed and dtype.")

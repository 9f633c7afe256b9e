"""What SLURM says about a sweep's jobs and nodes, and what becomes of a job it lost.

The launcher of `hydra/launcher=slurm` (hydra_plugins/ganlab_launchers/slurm.py; Hydra finds
launchers only in that namespace) waits for its job array by asking SLURM through the
functions here: `query_jobs` (squeue, which also lists finished jobs for `MinJobAge`),
`accounting_states` (sacct, where accounting is on; None where it is not), `partition_nodes`
(sinfo: each node's configured CPUs and memory, its state and the reason for it) and
`kill_wait_s` (scontrol). How those answers are read (when a job is lost, what a wait is for,
which request no node can ever run) is `ganlab.sweeps.slurm_wait`'s. A job that ends without a
result is recorded by `record_lost` where the sweep's summary (`ganlab.sweeps.sweep`) counts it,
and a run its job could not close is closed by `close_left_run`. Nothing here imports Hydra or
TensorFlow.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# SLURM job states (squeue's %T, sacct's State) in which a job may still produce its result.
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED"}
DEFAULT_KILL_WAIT_S = 30  # SLURM's default KillWait, when scontrol does not say


def _ask(command: list[str]) -> subprocess.CompletedProcess | str:
    """The finished command, or why it could not be run (a line)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{command[0]}: {error}"


def _said(done: subprocess.CompletedProcess) -> str:
    """The first line a failed SLURM command printed, e.g. `Unable to contact slurm controller (connect failure)`."""
    line = next((line for line in (done.stderr + done.stdout).splitlines() if line.strip()), f"exit {done.returncode}")
    return re.sub(r"^\S+ error: ", "", line.strip())


def query_jobs(job_ids: list[str]) -> tuple[dict[str, tuple[str, str]] | None, str]:
    """({job id (`<array>_<task>`): (state, reason)} of the jobs SLURM still lists (finished ones
    for MinJobAge, 5 minutes by default), ""); (None, what squeue said) when it gives no answer."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    done = _ask(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r", f"--jobs={','.join(arrays)}"])
    if isinstance(done, str):
        return None, done
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:  # every job of the arrays is forgotten
            return {}, ""
        return None, f"squeue: {_said(done)}"
    states = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states, ""


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """`query_jobs` without the reason it failed: None when squeue does not answer."""
    return query_jobs(job_ids)[0]


def accounting_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: the state sacct recorded} for the jobs accounting knows; None where accounting is
    off or does not answer (then squeue alone decides)."""
    if not job_ids:
        return {}
    done = _ask(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                 f"--jobs={','.join(job_ids)}"])
    if isinstance(done, str) or done.returncode != 0:
        return None
    states = {}
    for line in done.stdout.splitlines():
        found_id, _, state = line.strip().partition("|")
        if state:
            states[found_id] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def accounting_state(job_id: str) -> str:
    """The end state `sacct` recorded for a job squeue no longer lists, where accounting is on."""
    found = (accounting_states([job_id]) or {}).get(job_id)
    return found or "(SLURM no longer lists it, and keeps no accounting to say how)"


def cancel(job_ids: list[str]) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True, check=False)


def partition_nodes(partition: str | None) -> list[dict[str, Any]] | None:
    """The nodes of `partition` (the default one when None): name, configured CPUs and memory (MB),
    state and the reason an administrator gave for it; None if sinfo does not answer."""
    command = ["sinfo", "--noheader", "--Node", "--format=%N|%c|%m|%T|%P|%E"]
    if partition:
        command.append(f"--partition={partition}")
    done = _ask(command)
    if isinstance(done, str) or done.returncode != 0:
        return None
    nodes = []
    for line in done.stdout.splitlines():
        parts = line.strip().split("|", 5)
        if len(parts) != 6 or (not partition and not parts[4].endswith("*")):  # "*": the default partition
            continue
        try:
            nodes.append({"name": parts[0], "cpus": int(parts[1]), "mem_mb": float(parts[2].rstrip("+")),
                          "state": parts[3], "reason": parts[5] if parts[5] not in ("none", "(null)") else ""})
        except ValueError:
            continue
    return nodes


def kill_wait_s() -> int:
    """SLURM's KillWait: how long a cancelled job has between SIGTERM and SIGKILL."""
    done = _ask(["scontrol", "show", "config"])
    found = re.search(r"^KillWait\s*=\s*(\d+)", done.stdout, re.MULTILINE) if not isinstance(done, str) else None
    return int(found.group(1)) if found else DEFAULT_KILL_WAIT_S


def record_lost(sweep_dir: Path, job_dir: Path, job_num: int, overrides: list[str], why: str,
                tracking_uri: str | None, experiment: str) -> None:
    """Leaves a lost job where the sweep's summary counts it: the reason in the sweep folder's
    LOST_JOBS_FILE, Hydra's overrides file in the job's folder (made if the job never started),
    and its run, if a job killed outright left it RUNNING, closed with `why` as its failure reason."""
    from ganlab.sweeps import sweep

    try:
        if not (job_dir / ".hydra" / "overrides.yaml").exists():
            (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")
        lost = sweep.lost_jobs(sweep_dir)
        lost[str(job_num)] = why
        (sweep_dir / sweep.LOST_JOBS_FILE).write_text(json.dumps(lost, indent=1))
    except OSError as error:
        log.warning("could not record lost sweep job %d in %s: %s", job_num, sweep_dir, error)
    close_left_run(sweep_dir, job_num, why, tracking_uri, experiment)


def close_left_run(sweep_dir: Path, job_num: int, why: str, tracking_uri: str | None, experiment: str,
                   status: str | None = None) -> bool:
    """A job killed outright (SIGKILL after KillWait, out of memory) cannot close its run: close it
    here, only once SLURM says the job has ended, as `status` (default: KILLED for a cancelled job,
    else FAILED). True if a RUNNING run was closed."""
    from ganlab.sweeps import sweep
    from ganlab.tracking import store as tracking
    from ganlab.tracking.job_run import close_left_running

    parent_id = sweep.read_sweep_file(sweep_dir).get("parent_run_id")
    if parent_id is None:
        return False
    closed = False
    try:
        client, experiment_id = tracking.open_store(tracking_uri, experiment)
        _, children = tracking.sweep_children(client, experiment_id, parent_id)
        for child in children:
            if child.data.tags.get(tracking.JOB_NUM_TAG) == str(job_num):  # SLURM says its job has ended
                closed |= close_left_running(client, child, status or ("KILLED" if "CANCELLED" in why else "FAILED"),
                                             why, holder_ended=True)
    except Exception as error:  # noqa: BLE001 - the summary still counts the job as not finished
        log.warning("could not close the run of lost sweep job %d: %s", job_num, error)
    return closed

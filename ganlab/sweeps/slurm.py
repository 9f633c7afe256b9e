"""What SLURM says about a sweep's jobs, and what becomes of a job it lost.

The launcher of `hydra/launcher=slurm` (hydra_plugins/ganlab_launchers/slurm.py; Hydra finds
launchers only in that namespace) waits for its job array by asking SLURM through the
functions here: `job_states` (squeue, which also lists finished jobs for `MinJobAge`),
`accounting_state` (sacct, where accounting is on), `partition_nodes` (sinfo). A job that
ends without a result is recorded by `record_lost` where the sweep's summary (`ganlab.sweeps.sweep`)
counts it, and a run it could not close is closed. `cannot_start` and `asked_and_available`
word the refusal of an array no node can run. Nothing here imports Hydra or TensorFlow.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# SLURM job states (squeue's %T, sacct's State) in which a job may still produce its result.
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED"}
# Pending reasons that no amount of waiting mends.
NEVER_STARTS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints"}
UNUSABLE_NODE_STATES = ("down", "drain", "fail", "inval", "unknown", "not_responding")


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id (`<array>_<task>`): (state, reason)} of the jobs SLURM still lists (finished ones
    for MinJobAge, 5 minutes by default); None when squeue does not answer."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
                               f"--jobs={','.join(arrays)}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None  # every job of the arrays is forgotten
    states = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def accounting_state(job_id: str) -> str:
    """The end state `sacct` recorded for a job squeue no longer lists, where accounting is on."""
    try:
        done = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                               f"--jobs={job_id}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    for line in (done.stdout.splitlines() if done is not None and done.returncode == 0 else []):
        found_id, _, state = line.partition("|")
        if found_id == job_id and state:
            return state.split()[0]
    return "(SLURM no longer lists it, and keeps no accounting to say how)"


def cancel(job_ids: list[str]) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True, check=False)


def partition_nodes(partition: str | None) -> list[dict[str, Any]] | None:
    """The nodes of `partition` (the default one when None): name, CPUs, memory (MB), state; None if sinfo fails."""
    command = ["sinfo", "--noheader", "--Node", "--format=%N|%c|%m|%T|%P"]
    if partition:
        command.append(f"--partition={partition}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    nodes = []
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or (not partition and not parts[4].endswith("*")):  # "*": the default partition
            continue
        try:
            nodes.append({"name": parts[0], "cpus": int(parts[1]), "mem_mb": float(parts[2].rstrip("+")),
                          "state": parts[3]})
        except ValueError:
            continue
    return nodes


def is_unusable(state: str) -> bool:
    """Whether a node in this sinfo state takes no new jobs until an administrator acts."""
    return state.lower().rstrip("*~#!%$@^-").startswith(UNUSABLE_NODE_STATES)


def cannot_start(pending_reasons: set[str], params: dict) -> bool:
    """Whether pending jobs with these reasons and launcher `params` can never start: a reason
    no wait mends, or no usable node of the partition with the CPUs and memory a job asks."""
    if pending_reasons & NEVER_STARTS:
        return True
    if not pending_reasons - {"None"}:  # just submitted: SLURM has not looked at them yet
        return False
    nodes = partition_nodes(params.get("partition"))
    if nodes is None:  # sinfo did not answer: no verdict
        return False
    cpus, mem_mb = asked(params)
    return not [node for node in nodes if node["cpus"] >= cpus and node["mem_mb"] >= mem_mb
                and not is_unusable(node["state"])]


def asked(params: dict) -> tuple[int, float]:
    """(CPUs, memory in MB) a job of the launcher `params` asks for on its node."""
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    return cpus, (params.get("mem_gb") or 0) * 1024


def asked_and_available(params: dict) -> str:
    """What each job asks (naming the launcher's keys) and what the partition's nodes have."""
    partition = params.get("partition")
    nodes = partition_nodes(partition)
    where = f"partition {partition}" if partition else "the default partition"
    if nodes:
        have = "; ".join(f"{node['name']}: {node['cpus']} CPUs, {node['mem_mb'] / 1024:.1f} GB, {node['state']}"
                         for node in nodes[:5]) + (f"; and {len(nodes) - 5} more" if len(nodes) > 5 else "")
    else:
        have = "no nodes that sinfo lists"
    tasks = params.get("tasks_per_node") or 1
    return (f"Each job asks for hydra.launcher.cpus_per_task={params.get('cpus_per_task')} CPUs"
            f"{f' x {tasks} tasks' if tasks > 1 else ''} and hydra.launcher.mem_gb={params.get('mem_gb')} GB; "
            f"the nodes of {where} have {have}. A ganlab job needs 1-2 cores and under 2 GB: lower "
            "hydra.launcher.cpus_per_task / hydra.launcher.mem_gb, or choose another hydra.launcher.partition.")


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
        lost_file = sweep_dir / sweep.LOST_JOBS_FILE
        lost = json.loads(lost_file.read_text()) if lost_file.exists() else {}
        lost[str(job_num)] = why
        lost_file.write_text(json.dumps(lost, indent=1))
    except OSError as error:
        log.warning("could not record lost sweep job %d in %s: %s", job_num, sweep_dir, error)
    close_left_run(sweep_dir, job_num, why, tracking_uri, experiment)


def close_left_run(sweep_dir: Path, job_num: int, why: str, tracking_uri: str | None, experiment: str) -> None:
    """A job killed outright (SIGKILL, out of memory) cannot close its run: close it here."""
    from ganlab.sweeps import sweep
    from ganlab.tracking import store as tracking
    from ganlab.tracking.job_run import FAILURE_TAG

    parent_id = sweep.read_sweep_file(sweep_dir).get("parent_run_id")
    if parent_id is None:
        return
    try:
        client, experiment_id = tracking.open_store(tracking_uri, experiment)
        _, children = tracking.sweep_children(client, experiment_id, parent_id)
        for child in children:
            if child.data.tags.get(tracking.JOB_NUM_TAG) == str(job_num) and child.info.status == "RUNNING":
                client.set_tag(child.info.run_id, FAILURE_TAG, why)
                client.set_terminated(child.info.run_id, "KILLED" if "CANCELLED" in why else "FAILED")
    except Exception as error:  # noqa: BLE001 - the summary still counts the job as not finished
        log.warning("could not close the run of lost sweep job %d: %s", job_num, error)

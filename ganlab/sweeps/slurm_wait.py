"""How the SLURM launcher reads what SLURM says: when a job is lost, what a wait is for, and
which request no node can ever run.

Rules over the answers `ganlab.sweeps.slurm` fetches (no subprocess, Hydra or TensorFlow here):

- *Lost* (`LostWatch`): a job without a result is lost only once squeue (the job ended, or is
  forgotten) and sacct (where accounting is on) agree, without a break, for `lost_after_s`
  (default 120 s: a shared disk's attribute cache can hide a finished job's result file for a
  minute, and a job SLURM requeues after NODE_FAIL shows an end state before it is PENDING
  again). Any answer in between that says the job is active starts the count again.
- *Waiting is not failing* (`Notices`, `node_wait`): a controller that does not answer
  (restarting, unreachable) and nodes that take no job for now (drained, down, `unknown` after a
  restart, not responding) are waited for, with one line per episode saying what for.
- *Never* (`never_fits`): only a request that exceeds every node of the partition as configured
  (CPUs, RealMemory), whatever state the nodes are in, can never start.
"""

from __future__ import annotations

from typing import Any, Callable

from ganlab.sweeps.slurm import ACTIVE_STATES

DEFAULT_LOST_AFTER_S = 120
LOST_AFTER_KEY = "hydra.launcher.lost_after_s"

# Node states (sinfo's %T, flags stripped) in which a node takes no new job for now, and how a
# line names them. They are waited for: an administrator or the node itself ends them.
NODE_WAITS = {
    "drain": "drained",  # also "draining": its running jobs go on, nothing new starts
    "down": "down",
    "fail": "failing",
    "unknown": "unknown to the controller (as after a slurmctld restart, until its slurmd reports)",
    "not_responding": "not responding",
    "inval": "registered with an invalid configuration",
    "maint": "in a maintenance reservation",
    "reboot": "rebooting",
    "power": "powered down",
    "future": "not in service yet",
    "planned": "held for a planned job",
}


def is_active(state: str | None) -> bool:
    return state in ACTIVE_STATES


class LostWatch:
    """When a job that has no result counts as lost (see the module's docstring)."""

    def __init__(self, lost_after_s: float):
        self.lost_after_s = lost_after_s
        self.ended_since: dict[str, float] = {}  # job id -> when squeue and sacct first agreed it ended

    def observe(self, job_id: str, squeue_state: str | None, sacct_state: str | None, now: float) -> bool:
        """Notes one answer (`squeue_state` None: squeue no longer lists the job; `sacct_state`
        None: no accounting, or it does not know the job); True once the job counts as lost."""
        if is_active(squeue_state) or is_active(sacct_state):
            self.ended_since.pop(job_id, None)
            return False
        since = self.ended_since.setdefault(job_id, now)
        if now - since < self.lost_after_s:
            return False
        del self.ended_since[job_id]  # the verdict is given once
        return True

    def next_verdict(self, job_ids: list[str]) -> float:
        """When the earliest of these jobs now counted as ended could be lost (inf if none)."""
        return min((self.ended_since[job_id] for job_id in job_ids if job_id in self.ended_since),
                   default=float("inf")) + self.lost_after_s


class Notices:
    """One line per episode of waiting: said when a wait begins or what it waits for changes,
    not again while it lasts."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.current: dict[str, str] = {}

    def track(self, topic: str, line: str | None) -> None:
        """`line`: what the wait on `topic` is now (said if new); None: that wait is over."""
        if line is None:
            self.current.pop(topic, None)
        elif self.current.get(topic) != line:
            self.current[topic] = line
            self.say(line)


def asked(params: dict) -> tuple[int, float]:
    """(CPUs, memory in MB) a job of the launcher `params` asks for on its node."""
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    return cpus, (params.get("mem_gb") or 0) * 1024


def fits(node: dict[str, Any], params: dict) -> bool:
    """Whether the node, as configured, has the CPUs and memory a job asks for."""
    cpus, mem_mb = asked(params)
    return node["cpus"] >= cpus and node["mem_mb"] >= mem_mb


def never_fits(nodes: list[dict[str, Any]] | None, params: dict) -> bool:
    """True only when sinfo listed the partition's nodes and none, as configured, can run a job."""
    return bool(nodes) and not any(fits(node, params) for node in nodes)


def node_wait_state(state: str) -> str | None:
    """The NODE_WAITS key of a sinfo node state (`drained*`, `draining`, `down~`), None for a node
    that takes jobs (idle, mixed, allocated, completing)."""
    bare = state.lower().rstrip("*~#!%$@^-+")
    return next((key for key in NODE_WAITS if bare.startswith(key)), None)


def node_wait(nodes: list[dict[str, Any]] | None, params: dict) -> str | None:
    """What pending jobs wait for when every node that could run them takes no job for now, e.g.
    `node vm is drained (reason: test)`; None when such a node is up (they wait for CPUs only)."""
    able = [node for node in nodes or [] if fits(node, params)]
    waiting = [(node, node_wait_state(node["state"])) for node in able]
    if not waiting or any(state is None for _, state in waiting):
        return None
    said = [f"{node['name']} is {NODE_WAITS[state]}" + (f" (reason: {node['reason']})" if node["reason"] else "")
            for node, state in waiting[:5]]
    more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
    return f"node{'s' if len(waiting) > 1 else ''} {'; '.join(said)}{more}"


def describe_request(params: dict, nodes: list[dict[str, Any]] | None) -> str:
    """What each job asks (naming the launcher's keys) and what the partition's nodes have."""
    partition = params.get("partition")
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


def check_lost_after(value: Any) -> float:
    """`hydra.launcher.lost_after_s` as a number of seconds, or ValueError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{LOST_AFTER_KEY}={value!r}: give the seconds (a number >= 0, default "
                         f"{DEFAULT_LOST_AFTER_S}) that squeue and sacct must agree a job ended without a result "
                         "before the sweep counts it lost.")
    return float(value)

"""Who holds a run: an owner tag on the MLflow run, taken with compare-and-set, that holds across machines.

A process that trains a job's run, or runs a sweep (its parent run), writes the tag
`ganlab.owner` on that run: its host, process id and start time, its SLURM job, a random
token and a heartbeat time, refreshed every HEARTBEAT_S seconds by a background thread.
Taking a run that already exists (a resume) is a compare-and-set through the store:
read the tag; if a live process holds it, refuse, naming that process and host; else
write our own, wait SETTLE_S for a writer that read the same old value, read it back,
and hold the run only if our token is still there. A store is shared by every machine
that writes to it, so this holds across the nodes of a cluster where a file lock
(`flock` on a shared disk) may hold only within one machine.

An owner is alive when (on this machine) its process exists with the recorded start
time, or (on another machine) its heartbeat is younger than STALE_AFTER_S
(`GANLAB_LOCK_STALE_S`, default 180). A requeued SLURM job is never held off by its own
earlier incarnation (same SLURM job id): SLURM runs one at a time. A run is deleted or
closed by someone else only when no live process holds it (`closable`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from ganlab.core.errors import InputError

OWNER_TAG = "ganlab.owner"
HEARTBEAT_S = 30
SETTLE_S = 1.0  # how long a writer waits before reading its tag back
STALE_ENV = "GANLAB_LOCK_STALE_S"
STALE_AFTER_S = 180

log = logging.getLogger(__name__)


class AlreadyFinished(Exception):
    """The run (or sweep) named has FINISHED: nothing to do."""


class RunHeld(InputError):
    """Another live process holds the run."""


def stale_after_s() -> float:
    try:
        return float(os.environ.get(STALE_ENV, STALE_AFTER_S))
    except ValueError:
        return STALE_AFTER_S


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _slurm_job() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def new_owner() -> dict:
    """This process as an owner (a fresh token: two locks of one process are two owners)."""
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
            "slurm": _slurm_job(), "token": uuid.uuid4().hex, "since": now, "beat": now}


def owner_of(run) -> dict | None:
    """The owner recorded on `run` (None if none or unreadable)."""
    try:
        owner = json.loads(run.data.tags.get(OWNER_TAG, ""))
    except ValueError:
        return None
    return owner if isinstance(owner, dict) and "token" in owner else None


def is_alive(owner: dict | None) -> bool:
    """Whether the process `owner` names may still be working on its run."""
    if not owner:
        return False
    mine = _slurm_job()
    if mine and owner.get("slurm") == mine and owner.get("pid") != os.getpid():
        return False  # this SLURM job's earlier incarnation: SLURM runs one at a time
    if owner.get("host") == socket.gethostname():
        started = _process_start(int(owner.get("pid", -1)))
        recorded = owner.get("started")
        return started is not None and (recorded is None or abs(started - float(recorded)) < 1.0)
    return time.time() - float(owner.get("beat", 0)) < stale_after_s()


def closable(run) -> bool:
    """Whether another process may close or delete `run`: no live process holds it, or it is this one's."""
    owner = owner_of(run)
    if owner is None or not is_alive(owner):
        return True
    return owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()


def describe(owner: dict) -> str:
    since = datetime.fromtimestamp(float(owner.get("since", 0)), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    slurm = f", SLURM job {owner['slurm']}" if owner.get("slurm") else ""
    return f"process {owner.get('pid')} on host {owner.get('host')}{slurm} (since {since})"


def owner_tag(owner: dict) -> str:
    return json.dumps(owner, sort_keys=True)


class RunLock:
    """The owner tag of one run held by this process: `take` (compare-and-set) or `claim` (a run
    just created with the tag), a heartbeat while held, `release` at the end."""

    def __init__(self, client, run_id: str, what: str):
        self.client, self.run_id, self.what = client, run_id, what
        self.owner = new_owner()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self):
        """Hold the run or raise RunHeld naming its live holder; returns the run as read under the lock."""
        current = owner_of(self.client.get_run(self.run_id))
        if current is not None and current.get("token") != self.owner["token"] and is_alive(current):
            raise self._held(current)
        self.client.set_tag(self.run_id, OWNER_TAG, owner_tag(self.owner))
        time.sleep(SETTLE_S)  # a writer that read the old value writes within this time, then we see it
        run = self.client.get_run(self.run_id)
        found = owner_of(run)
        if found is None or found.get("token") != self.owner["token"]:
            raise self._held(found or {"pid": "?", "host": "?"})
        self._start_heartbeat()
        return run

    def claim(self) -> None:
        """The run was created with `tag()` as its owner tag: only the heartbeat starts."""
        self._start_heartbeat()

    def tag(self) -> dict[str, str]:
        return {OWNER_TAG: owner_tag(self.owner)}

    def _held(self, owner: dict) -> RunHeld:
        return RunHeld(f"{self.what} {self.run_id} is held by {describe(owner)}, which is still running; wait for it "
                       "to end (or stop it) and run this command again.")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                self.owner["beat"] = time.time()
                try:
                    self.client.set_tag(self.run_id, OWNER_TAG, owner_tag(self.owner))
                except Exception as error:  # noqa: BLE001 - the job's own store calls report a failing store
                    log.debug("heartbeat of run %s: %s", self.run_id, error)

        self._thread = threading.Thread(target=beat, name=f"ganlab-owner-{self.run_id[:8]}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self, wait: bool = True) -> None:
        """Stop the heartbeat; `wait=False` when the store failed (a beat may hang on it: it is a daemon)."""
        self._stop.set()
        if self._thread is not None and wait:
            self._thread.join(timeout=5)
        self._thread = None

    def release(self) -> None:
        """Stop the heartbeat and remove the owner tag if it is still ours (best-effort)."""
        self.stop_heartbeat()
        try:
            if (owner_of(self.client.get_run(self.run_id)) or {}).get("token") == self.owner["token"]:
                self.client.delete_tag(self.run_id, OWNER_TAG)
        except Exception as error:  # noqa: BLE001 - a dead owner is not alive anyway
            log.debug("releasing run %s: %s", self.run_id, error)

"""Resume under concurrency: a run held by a live process (here or on another machine) is never
reopened, deleted or closed by another, a FINISHED run is never reopened, and a disk without file
locks is one line naming the knob that moves the locks. One live resume per sweep (two
sweep.resume started together after a kill -9) is tested through the CLI in test_settle.py."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import new_store
from ganlab.core import filelock
from ganlab.core.errors import InputError
from ganlab.sweeps import sweep as sweep_tracking
from ganlab.tracking import run_lock
from ganlab.tracking import store as tracking
from ganlab.tracking.job_run import FAILURE_TAG, JobRun, close_left_running
from ganlab.training import checkpoint


@pytest.fixture
def store(tmp_path):
    uri = new_store(tmp_path / "mlruns" / "mlflow.db")
    client, experiment_id = tracking.open_store(uri, "ganlab")
    return uri, client, experiment_id


def held_by(owner: dict) -> dict:
    return {run_lock.OWNER_TAG: run_lock.owner_tag(owner)}


def other_machine(beat_age_s: float) -> dict:
    now = time.time()
    return {"host": "node-7", "pid": 4242, "started": now - 600, "slurm": None, "token": "t" * 32,
            "since": now - 600, "beat": now - beat_age_s}


def test_a_run_another_machine_holds_is_refused_until_its_heartbeat_is_stale(store, tmp_path, monkeypatch):
    uri, client, experiment_id = store
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_id = client.create_run(experiment_id, tags=held_by(other_machine(beat_age_s=5))).info.run_id
    client.set_terminated(run_id, "KILLED")
    with pytest.raises(run_lock.RunHeld, match=r"run .* is held by process 4242 on host node-7 .*still running"):
        JobRun(uri, "ganlab", tmp_path, "job", {}, resume_run_id=run_id).__enter__()
    assert client.get_run(run_id).info.status == "KILLED"  # untouched

    client.set_tag(run_id, run_lock.OWNER_TAG, run_lock.owner_tag(other_machine(beat_age_s=run_lock.STALE_AFTER_S + 1)))
    with JobRun(uri, "ganlab", tmp_path, "job", {}, resume_run_id=run_id):
        owner = run_lock.owner_of(client.get_run(run_id))
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED" and run_lock.OWNER_TAG not in after.data.tags  # released at the end


def test_a_requeued_slurm_job_is_not_held_off_by_its_own_earlier_incarnation(store, monkeypatch):
    _, client, experiment_id = store
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    earlier = {**other_machine(beat_age_s=1), "slurm": "812"}
    run = client.create_run(experiment_id, tags=held_by(earlier))
    assert run_lock.closable(client.get_run(run.info.run_id))
    monkeypatch.setenv("SLURM_JOB_ID", "813")
    assert not run_lock.closable(client.get_run(run.info.run_id))


def test_a_finished_run_is_never_reopened(store, tmp_path):
    uri, client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "epochs", "3")
    client.set_terminated(run_id, "FINISHED")
    with pytest.raises(checkpoint.AlreadyFinished, match="has trained all 3 epochs already"):
        JobRun(uri, "ganlab", tmp_path, "job", {}, resume_run_id=run_id).__enter__()
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED" and run_lock.OWNER_TAG not in after.data.tags


def test_a_stopping_sweep_closes_only_the_runs_no_live_process_holds(store):
    _, client, experiment_id = store
    parent = client.create_run(experiment_id).info.run_id
    # A live process that is not this one's child (those a stopping sweep stops itself): another resume's.
    pid = int(subprocess.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                             check=True).stdout)
    try:
        alive = {**run_lock.new_owner(), "pid": pid, "started": run_lock._process_start(pid)}
        dead = {**alive, "pid": 2**22 + 7, "started": 1.0}
        held = client.create_run(experiment_id, tags={tracking.PARENT_RUN_TAG: parent, **held_by(alive)}).info.run_id
        orphan = client.create_run(experiment_id, tags={tracking.PARENT_RUN_TAG: parent, **held_by(dead)}).info.run_id
        sweep_tracking.close_orphaned_jobs(client, parent)
        assert client.get_run(held).info.status == "RUNNING"
        assert client.get_run(orphan).info.status == "KILLED"
        assert f"sweep.resume={parent}" in client.get_run(orphan).data.tags[FAILURE_TAG]
        assert not close_left_running(client, client.get_run(orphan), "FAILED", "again")  # closed runs stay closed
        # SLURM says the job ended (a heartbeat may look fresh a while): the same closing, told its holder is gone.
        assert close_left_running(client, client.get_run(held), "KILLED", "CANCELLED by SLURM", holder_ended=True)
        closed = client.get_run(held)
        assert closed.info.status == "KILLED" and closed.data.tags[FAILURE_TAG] == "CANCELLED by SLURM"
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_disk_without_file_locks_is_one_line_naming_the_lock_directory_knob(tmp_path, monkeypatch):
    real_flock = fcntl.flock

    def no_locks_on_the_shared_disk(stream, flags):  # as NFS without a lock daemon answers
        if str(tmp_path / "shared") in stream.name:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_flock(stream, flags)

    monkeypatch.setattr(fcntl, "flock", no_locks_on_the_shared_disk)
    folder = tmp_path / "shared" / "job" / checkpoint.FOLDER
    with pytest.raises(InputError) as refused:
        checkpoint.FolderLock(folder).acquire()
    assert "does not support file locks" in str(refused.value) and filelock.LOCK_DIR_ENV in str(refused.value)
    assert "\n" not in str(refused.value)

    monkeypatch.setenv(filelock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    with checkpoint.FolderLock(folder):
        with pytest.raises(InputError, match="in use by a running job"):
            checkpoint.FolderLock(folder).acquire()  # the lock holds, in the lock directory
    assert [path.name.endswith(checkpoint.LOCK_FILE) for path in (tmp_path / "locks").iterdir()] == [True]

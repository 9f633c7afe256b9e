"""A stopped sweep goes on: `sweep.resume=<parent run id>` continues the interrupted jobs in their own
runs (a sweep killed -9 half way, then resumed twice at once: test_settle.py); a stopped parallel sweep leaves no run
RUNNING; a stop that arrives while a run is closing cannot cut it short; what cannot be continued is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (QUICK, all_runs, artifact_paths, hold_after_checkpoint, new_store, run_cli, start_cli,
                      store_client, thaw_once_signalled)
from omegaconf import OmegaConf

from ganlab.core.errors import InputError
from ganlab.sweeps import sweep
from ganlab.tracking import store as tracking
from ganlab.training import checkpoint
from ganlab.training.resume import look_up
from ganlab.core import scores
from ganlab.training.job import signals_as_interrupt

def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    return start_cli(args, cwd, start_new_session=True)


def parent_and_children(cwd: Path):
    runs = all_runs(cwd)
    parents = [run for run in runs if run.data.tags.get("sweep.parent") == "true"]
    assert len(parents) == 1, [run.info.run_name for run in runs]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], sorted(children, key=lambda run: int(run.data.tags["sweep.job_num"]))


@pytest.mark.heavy
def test_a_stopped_parallel_sweep_leaves_no_run_running_goes_on_with_sweep_resume_and_then_refuses_to_run_again(workdir, capsys):
    epochs = 4
    args = ["-m", "hydra/launcher=parallel", "dropout=0.1,0.3", *QUICK, f"epochs={epochs}", f"eval.every={epochs}"]
    running = start_sweep(args, workdir)
    held = hold_after_checkpoint(workdir, running, [0, 1])
    running.send_signal(signal.SIGTERM)  # neither job could finish before it
    thaw_once_signalled(list(held.values()), signal.SIGTERM)
    _, stderr = running.communicate(timeout=600)
    assert running.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in stderr.splitlines() if "interrupted by SIGTERM" in line] == [
        "ganlab: interrupted by SIGTERM: its runs are marked KILLED."]
    parent, children = parent_and_children(workdir)
    assert len(children) == 2
    assert parent.info.status == "KILLED"
    assert {child.info.status for child in children} == {"KILLED"}

    again = run_cli([*args, f"sweep.resume={parent.info.run_id}"], workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FINISHED" and [child.info.status for child in children] == ["FINISHED"] * 2
    client = store_client(workdir)
    for child in children:
        steps = [point.step for point in client.get_metric_history(child.info.run_id, scores.D_LOSS)]
        assert sorted(steps) == list(range(1, epochs + 1))

    # Finished now. Other overrides, or a job's run: refused before anything starts (the sweep's own check, in
    # this process); sweep.resume without -m too.
    started_with = parent.data.tags[sweep.PARENT_OVERRIDES_TAG]
    for target, overrides, said in [
        (parent.info.run_id, started_with.replace("dropout=0.1,0.3", "dropout=0.1,0.5"), "continue it with the same ones"),
        (children[0].info.run_id, started_with, "is not the parent run of a sweep"),
    ]:
        with pytest.raises(SystemExit) as refused:
            sweep.reopen_parent(client, parent.info.experiment_id, target, overrides)
        assert refused.value.code == 1 and said in capsys.readouterr().err
    single = run_cli([*QUICK, f"sweep.resume={parent.info.run_id}"], workdir)
    assert single.returncode == 1 and "goes with -m" in single.stderr
    assert len(all_runs(workdir)) == 3  # nothing new was started

    # Continued once more, named by its folder: nothing to do, nothing logged twice, no empty sweep folder.
    folders = sorted((workdir / "outputs" / "multirun").iterdir())
    artifacts = artifact_paths(client, parent.info.run_id)
    finished = run_cli([*args, f"sweep.resume={parent.data.tags['sweep.dir']}"], workdir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"sweep {parent.info.run_id} has finished (2 of 2 finished); nothing to continue." in finished.stdout
    assert f"epoch 1/{epochs}" not in finished.stdout
    assert sorted((workdir / "outputs" / "multirun").iterdir()) == folders
    after, children = parent_and_children(workdir)
    assert after.info.status == "FINISHED" and after.info.end_time == parent.info.end_time and len(children) == 2
    assert artifact_paths(client, parent.info.run_id) == artifacts


# A sweep process that starts a resource tracker (as joblib's workers do) and a job, then stops like a sweep that
# got Ctrl-C; it prints whether the job ended and whether the tracker is left to end with it.
STOPPING_SWEEP = """
import multiprocessing.resource_tracker, subprocess, sys
import psutil
from ganlab.sweeps.sweep import close_orphaned_jobs
from ganlab.tracking import store as tracking

client, experiment_id = tracking.open_store(sys.argv[1], "ganlab")
parent = client.create_run(experiment_id, tags={tracking.SWEEP_PARENT_TAG: "true"}).info.run_id
multiprocessing.resource_tracker.ensure_running()
job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(tracker,) = [child for child in psutil.Process().children() if "resource_tracker" in " ".join(child.cmdline())]
close_orphaned_jobs(client, parent)
print(job.poll() is not None, tracker.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD))
"""


def test_a_stopped_sweep_stops_its_jobs_and_leaves_resource_trackers_to_end_with_it(tmp_path):
    """Resource trackers ignore SIGTERM and end with the sweep's process: waiting for them held every stopped
    parallel sweep for a minute."""
    done = subprocess.run([sys.executable, "-c", STOPPING_SWEEP, f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True"]  # the job ended; the tracker was not waited for, nor killed


def test_a_refused_checkpoint_of_a_sweep_job_leaves_its_run_failed_not_running(tmp_path):
    uri = new_store(tmp_path / "mlruns" / "mlflow.db")
    client, experiment_id = tracking.open_store(uri, "ganlab")
    parent = client.create_run(experiment_id, tags={tracking.SWEEP_PARENT_TAG: "true"}).info.run_id
    folder = tmp_path / "outputs" / "multirun" / "x" / "0"
    (folder / checkpoint.FOLDER).mkdir(parents=True)
    (folder / checkpoint.FOLDER / checkpoint.FILE).write_bytes(b"PK\x03\x04 cut short by a full disk")
    child = client.create_run(experiment_id, tags={tracking.PARENT_RUN_TAG: parent, tracking.JOB_NUM_TAG: "0",
                                                   tracking.OVERRIDES_TAG: "dropout=0.1", "output_dir": str(folder)})
    cfg = OmegaConf.create({"resume": None, "tracking": {"uri": uri, "experiment": "ganlab"}})
    with pytest.raises(InputError, match="cannot be read"):
        look_up(cfg, parent, "0", ["dropout=0.1"])
    after = client.get_run(child.info.run_id)
    assert after.info.status == "FAILED" and "cannot be read" in after.data.tags["failure_reason"]


def test_only_the_first_stop_interrupts_a_job_a_later_one_cannot_cut_its_closing_short():
    with pytest.raises(KeyboardInterrupt):
        with signals_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # never reached: the handler raises as the signal arrives
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signals_as_interrupt() as stop:
        stop.now_closing()
        os.kill(os.getpid(), signal.SIGTERM)  # noted and ignored
        os.kill(os.getpid(), signal.SIGINT)
        stop.raise_if_requested()  # nothing to raise: the closing had begun
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # the old handlers are back


class SignalledWhileDeleted:
    """Sends SIGTERM to this process from its `__del__`, so the handler raises where Python drops the exception."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs in here, at the loop's first check
            pass


def test_a_stop_signal_swallowed_by_a_del_method_still_ends_the_job_at_the_epochs_end(monkeypatch):
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)  # where Python sends what it ignores
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with signals_as_interrupt() as stop:
            SignalledWhileDeleted()  # deleted at once
            assert [type(unraisable.exc_value) for unraisable in swallowed] == [KeyboardInterrupt]
            stop.raise_if_requested()  # what the epoch loop asks after every epoch


def test_sweep_resume_of_a_sweeper_that_cannot_continue_is_refused_in_one_line(capsys):
    from ganlab.sweeps.sweep import refuse_unresumable_sweeper

    optuna = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}}})
    with pytest.raises(SystemExit) as refused:
        refuse_unresumable_sweeper(optuna)
    assert refused.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: sweep.resume: continues sweeps of Hydra's basic sweeper (a grid) or ganlab's own, "
                           "not of OptunaSweeper")
    for resumable in ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                      "hydra_plugins.ganlab_sweepers.settle.SettleSweeper"):
        refuse_unresumable_sweeper(OmegaConf.create({"hydra": {"sweeper": {"_target_": resumable}}}))  # no exit


def test_a_sweep_that_got_sigterm_between_jobs_starts_no_further_job():
    from ganlab.sweeps.sweep import SweepTracking

    callback = SweepTracking()
    callback.on_job_start(config=OmegaConf.create({}))  # nothing received: the job starts
    callback.interrupted = True  # as the sweep's SIGTERM handler notes it, even where its raise was dropped
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        callback.on_job_start(config=OmegaConf.create({}))


def test_a_stop_during_the_sweeps_own_store_write_takes_effect_once_the_write_returns(tmp_path, monkeypatch):
    """The sweep's parent writes its run (summary, tags, closing) through open_store's client: a SIGTERM that
    arrives inside one of those writes lets it finish, then stops the sweep, and the store can still close the run."""
    from mlflow.tracking import MlflowClient

    uri = new_store(tmp_path / "mlflow.db")
    client, experiment = tracking.open_store(uri, "ganlab")
    parent = client.create_run(experiment, tags={tracking.SWEEP_PARENT_TAG: "true"}).info.run_id
    set_tag = MlflowClient.set_tag

    def set_tag_while_stopped(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the parent's handler runs here, as the write begins
        return set_tag(self, *args, **kwargs)

    callback = sweep.SweepTracking()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        callback._close_on_exit()  # the parent's stop handlers, as on_multirun_start installs them
        monkeypatch.setattr(MlflowClient, "set_tag", set_tag_while_stopped)
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            client.set_tag(parent, "sweep.jobs", "2 of 2 finished")
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    monkeypatch.undo()
    assert callback.interrupted
    reader = MlflowClient(tracking_uri=uri)
    assert reader.get_run(parent).data.tags["sweep.jobs"] == "2 of 2 finished"  # the write was made whole
    client.set_terminated(parent, "KILLED")  # and left no transaction open: the run can still be closed
    assert reader.get_run(parent).info.status == "KILLED"

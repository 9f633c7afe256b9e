"""Crash-safe checkpoints and resume: kill -9 at any moment, finished runs, concurrent resumes,
the checkpoint's own config and store, damaged files, full disks, hanging servers."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import (MNIST_FILE, NO_MODELS, QUICK, all_runs, hold_after_checkpoint, new_store, run_cli, small_disk,
                      start_cli, store_client, store_is_ready, thaw_once_signalled)
from ganlab.core import scores
from ganlab.training import checkpoint
from ganlab.training.resume import RESUME_OVERRIDES, check_overrides, prepare_resume
from ganlab.core.errors import InputError

TINY_EPOCHS = ["steps_per_epoch=1", "eval.enabled=false", "objective=g_loss", f"data.path={MNIST_FILE}",
               NO_MODELS]


def wait_for(condition, process: subprocess.Popen | None = None, deadline_s: float = 900):
    """Poll for an event; the deadline only guards against a hang."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            return None
        assert time.monotonic() < deadline, "the event never came"
        time.sleep(0.2)


def the_run(cwd: Path, experiment_name: str = "ganlab"):
    """The first run of the experiment in the store under `cwd`, once a job there has checkpointed (else None)."""
    if not store_is_ready(cwd):
        return None
    runs = all_runs(cwd, experiment_name)
    return runs[0] if runs else None


def steps(cwd: Path, run_id: str, metric: str = "d_loss") -> list[int]:
    return [point.step for point in store_client(cwd).get_metric_history(run_id, metric)]


# ---------------------------------------------------------------------------- checkpoint files


def test_a_failed_write_leaves_the_previous_checkpoint_whole_and_no_partial_file(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    meta = {"epoch": 1, "run_id": "r", "tracking_uri": "u", "experiment": "e", "threads": 1, "config": {"epochs": 3}}
    checkpoint.save(folder, [np.arange(3.0)], [{"epoch": 1}], meta)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(folder, [np.arange(3.0) + 1], [{"epoch": 1}, {"epoch": 2}], {**meta, "epoch": 2})
    assert sorted(path.name for path in folder.iterdir()) == [checkpoint.FILE]
    found = checkpoint.find(folder)
    assert found.epoch == 1 and found.threads == 1 and found.config.epochs == 3
    values, records = checkpoint.load_state(found)
    np.testing.assert_array_equal(values[0], np.arange(3.0))
    assert records == [{"epoch": 1}]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path, damage):
    folder = tmp_path / "checkpoint"
    checkpoint.save(folder, [np.zeros(1000)], [], {"epoch": 1, "config": {}})
    data = (folder / checkpoint.FILE).read_bytes()
    (folder / checkpoint.FILE).write_bytes(data[: len(data) // 2] if damage == "truncated" else b"{not a zip")
    with pytest.raises(InputError, match=r"resume: the checkpoint '.*checkpoint.npz' cannot be read .* damaged"):
        checkpoint.find(folder)


def test_a_locked_checkpoint_cannot_be_resumed(tmp_path):
    folder = tmp_path / "job" / "checkpoint"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "mlflow.db").touch()  # a resume writes into an existing store only
    checkpoint.save(folder, [np.zeros(2)], [], {"epoch": 1, "run_id": "r", "tracking_uri": store,
                                                "experiment": "e", "threads": 1, "config": {"epochs": 3}})
    held = checkpoint.FolderLock(folder).acquire()
    cfg = OmegaConf.create({"resume": str(folder.parent), "tracking": {"uri": None}})
    try:
        with pytest.raises(InputError, match="in use by a running job"):
            prepare_resume(cfg, [])
    finally:
        held.release()
    resumed = prepare_resume(cfg, [])
    assert resumed.config.threads == 1 and resumed.config.tracking.uri == store
    resumed.lock.release()


def test_a_checkpoint_its_run_has_gone_on_past_is_refused_naming_the_newest_folder(tmp_path):
    # A run stopped after epoch 1 in its first folder, resumed in another, and stopped there after
    # checkpointing epoch 4 but before logging it: the first folder's checkpoint is behind the run.
    store = new_store(tmp_path / "mlruns" / "mlflow.db")
    client = store_client(tmp_path)
    first, newest = tmp_path / "first_job", tmp_path / "resumed_job"
    run_id = client.create_run(client.create_experiment("e"), tags={"output_dir": str(newest)}).info.run_id
    for epoch in (1, 2, 3):
        client.log_metric(run_id, scores.D_LOSS, 0.5, step=epoch)
    client.set_terminated(run_id, "KILLED")
    for folder, epoch in ((first, 1), (newest, 4)):
        checkpoint.save(folder / checkpoint.FOLDER, [np.zeros(2)], [], {
            "epoch": epoch, "run_id": run_id, "tracking_uri": store, "experiment": "e", "threads": 1,
            "config": {"epochs": 5}})

    with pytest.raises(InputError) as refused:
        prepare_resume(OmegaConf.create({"resume": str(first), "tracking": {"uri": None}}), [])
    assert (f"holds epoch 1, but run {run_id} has logged epochs up to 3 since: resuming from it would log epochs 2 to "
            f"3 a second time. Resume it from its newest checkpoint, resume={run_id} (its output folder now: "
            f"{newest})") in str(refused.value)
    checkpoint.FolderLock(first / checkpoint.FOLDER).acquire().release()  # the refusal left no lock behind
    for target, uri in ((newest, None), (run_id, store)):  # one epoch ahead of the log: resumed as usual
        resumed = prepare_resume(OmegaConf.create({"resume": str(target), "tracking": {"uri": uri}}), [])
        assert resumed.checkpoint.epoch == 4 and resumed.checkpoint.folder == newest / checkpoint.FOLDER
        resumed.lock.release()


# ---------------------------------------------------------------------------- kill -9 and resume


# Epochs of a few seconds on one thread, the job's own experiment, an EMA of G: all of it must come back on resume.
# Five: the kills come 3.4 s and 3.0 s into training (the seeded draws below); an epoch takes 3.3 s on this
# project's 2-core machines with AVX2 only and 1.9 s on those with AVX-512 (both busy with the uninterrupted twin),
# so the job is still training at the second kill.
INTERRUPTED_EPOCHS = 5
INTERRUPTED = [f"epochs={INTERRUPTED_EPOCHS}", "steps_per_epoch=30", "threads=1", "tracking.experiment=elsewhere", "ema=0.999",
               "eval.enabled=false", "objective=g_loss", f"data.path={MNIST_FILE}", NO_MODELS]
TRAINING_STARTS = re.compile(r"training \d+ epochs of \d+ steps")  # the job's log line just before its first step


def wait_for_line(process: subprocess.Popen, pattern: re.Pattern) -> str | None:
    """Read the process's stdout up to the first line matching `pattern` (None if it ended first)."""
    for line in process.stdout:
        if pattern.search(line):
            return line
    return None


@pytest.mark.heavy
def test_sigterm_then_kill_9_at_random_moments_then_resume_from_another_folder_gives_the_uninterrupted_numbers(workdir):
    """A job SIGTERMed once epoch 1 is logged (one line, exit 143, its run KILLED), continued with `resume=<run id>`
    and killed -9 twice, each time at a random moment after training has started in that process (its "training
    ... epochs" line, printed just before the first step): mid-step, mid-checkpoint or while logging. Then resumed
    from another folder by the job folder its run names now, alone (no data.path, threads or tracking: all from the
    checkpoint): every epoch logged once, in its own run, and its losses, store values, generator and EMA those of the
    same job run uninterrupted beside it."""
    rng = random.Random(0)
    (workdir / "whole").mkdir()
    cwd = workdir / "killed"
    cwd.mkdir()
    whole = start_cli(INTERRUPTED, workdir / "whole")  # on the other core

    process = start_cli(INTERRUPTED, cwd)

    def epoch_one_logged():
        found = the_run(cwd, "elsewhere")
        return found if found and 1 in steps(cwd, found.info.run_id) else None

    run = wait_for(epoch_one_logged, process)
    assert run, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143 and "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.strip() and "step/s" not in line and "|" not in line]
    assert line.startswith("ganlab: interrupted by SIGTERM: its run is marked KILLED; resume=")
    killed = store_client(cwd).get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and "interrupted" in killed.data.tags["failure_reason"]

    for _ in range(2):
        process = start_cli([f"resume={run.info.run_id}"], cwd)
        assert wait_for_line(process, TRAINING_STARTS), process.communicate()[1][-3000:]
        time.sleep(rng.uniform(0.0, 4.0))  # a random moment of training
        assert process.poll() is None, "the job ended before its kill"
        process.kill()  # SIGKILL: nothing can be caught
        process.communicate()
    kept = steps(cwd, run.info.run_id)
    assert kept == list(range(1, len(kept) + 1)) and len(kept) < INTERRUPTED_EPOCHS
    # The folder the run names now: the last resumed job's, once it wrote its checkpoint (the first job's
    # folder still holds epoch 1). A kill between a checkpoint and its epoch's log leaves it one epoch ahead.
    folder = Path(store_client(cwd).get_run(run.info.run_id).data.tags["output_dir"])
    latest = checkpoint.find(folder).epoch
    assert latest - len(kept) in (0, 1), (latest, kept)

    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    result = run_cli([f"resume={folder}"], elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (elsewhere / "mlruns").exists()  # nothing went to this folder's default store
    resumed = store_client(cwd).get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.params["threads"] == "1"
    assert resumed.data.tags["resumed_from_epoch"] == str(latest)
    for metric in ("d_loss", "g_loss", "d_real", "d_fake", "steps_per_sec"):
        assert steps(cwd, run.info.run_id, metric) == list(range(1, INTERRUPTED_EPOCHS + 1)), metric
    new_dir = Path(re.search(r"job outputs in (\S+)", result.stdout).group(1))
    assert resumed.data.tags["output_dir"] == str(new_dir)

    whole_out, whole_err = whole.communicate(timeout=900)
    assert whole.returncode == 0, whole_err[-3000:]
    uninterrupted_dir = Path(re.search(r"job outputs in (\S+)", whole_out).group(1))
    whole_run = the_run(workdir / "whole", "elsewhere")
    for metric in ("d_loss", "g_loss", "d_real", "d_fake"):  # the same numbers in the store, logged by four processes
        values = [[point.value for point in sorted(store_client(where).get_metric_history(run_id, metric),
                                                   key=lambda point: point.step)]
                  for where, run_id in ((cwd, run.info.run_id), (workdir / "whole", whole_run.info.run_id))]
        assert len(values[0]) == INTERRUPTED_EPOCHS and values[0] == values[1], metric
    per_step = np.loadtxt(new_dir / "losses.csv", delimiter=",", skiprows=1)
    assert sorted(set(per_step[:, 0])) == list(range(1, INTERRUPTED_EPOCHS + 1))  # every epoch's steps, once
    np.testing.assert_array_equal(per_step, np.loadtxt(uninterrupted_dir / "losses.csv", delimiter=",", skiprows=1))
    import keras

    for name in ("generator_ema.keras", "generator.keras"):  # the EMA of G continued exactly across the stops
        resumed_net = keras.models.load_model(new_dir / "models" / name)
        whole_net = keras.models.load_model(uninterrupted_dir / "models" / name)
        for a, b in zip(resumed_net.get_weights(), whole_net.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("finished")
    result = run_cli(["epochs=2", *TINY_EPOCHS], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return cwd, the_run(cwd)


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished_run):
    cwd, run = finished_run
    before = job_folders(cwd)
    result = run_cli([f"resume={run.info.run_id}"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "has trained all 2 epochs already" in result.stdout
    assert job_folders(cwd) == before  # no empty outputs/runs/<time>/ left behind
    again = store_client(cwd).get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and again.info.end_time == run.info.end_time
    assert again.data.tags["output_dir"] == run.data.tags["output_dir"]
    assert steps(cwd, run.info.run_id) == [1, 2]


def test_resume_refuses_changes_to_what_is_trained_and_to_the_experiment(finished_run):
    cwd, run = finished_run
    result = run_cli([f"resume={run.data.tags['output_dir']}", "dropout=0.5"], cwd)  # through the CLI once, by folder
    assert result.returncode != 0 and "dropout=0.5" in result.stderr
    assert "resume: a resumed job trains with its checkpoint's config" in result.stderr
    assert "Only data.path, tracking.uri, threads may be given with resume" in result.stderr
    for override in ("dropout=0.5", "tracking.experiment=other", "epochs=3"):  # the check the CLI runs, key by key
        refused = "^resume: a resumed job trains with its checkpoint's config; .*" + re.escape(override)
        with pytest.raises(InputError, match=refused):
            check_overrides([f"resume={run.info.run_id}", override])
    allowed = [f"{key}=x" for key in RESUME_OVERRIDES]
    assert set(check_overrides([f"resume={run.info.run_id}", *allowed])) == set(RESUME_OVERRIDES)


# ---------------------------------------------------------------------------- nothing left RUNNING


def test_a_resume_of_a_running_job_is_refused_and_sigterm_to_its_sequential_sweep_leaves_no_run_running(workdir):
    # The sweep's first job is held still (SIGSTOP) after its first epoch: it is running, and stays mid-sweep.
    process = start_cli(["-m", "dropout=0.1,0.2,0.3", "epochs=3", *TINY_EPOCHS], workdir)
    held = hold_after_checkpoint(workdir, process, [0])
    (child,) = [r for r in all_runs(workdir) if "mlflow.parentRunId" in r.data.tags]
    result = run_cli([f"resume={child.info.run_id}"], workdir)
    assert result.returncode != 0 and "in use by a running job" in result.stderr
    assert process.poll() is None  # the running sweep went on
    process.send_signal(signal.SIGTERM)
    thaw_once_signalled(list(held.values()), signal.SIGTERM)
    process.communicate(timeout=300)
    assert process.returncode != 0
    statuses = {run.info.run_id: run.info.status for run in all_runs(workdir)}
    assert len(statuses) == 2 and set(statuses.values()) == {"KILLED"}, statuses  # the parent and its first job


def test_an_unusable_artifact_folder_ends_the_run_failed(workdir):
    blocker = workdir / "mlruns" / "artifacts" / "ganlab"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the experiment's artifact folder should be")
    result = run_cli(QUICK, workdir)
    assert result.returncode != 0
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags.get("failure_reason")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a 20 MB tmpfs needs root (CI runs as root)")
def test_a_full_disk_ends_the_run_failed_with_a_message_and_no_partial_file(tmp_path):
    with small_disk(tmp_path / "small", "20m") as mount:
        result = run_cli(QUICK, mount)
        assert result.returncode != 0
        assert "no space left on the device" in result.stderr
        (run,) = all_runs(mount)
        assert run.info.status == "FAILED" and "no space left" in run.data.tags["failure_reason"]
        assert not list(mount.glob("outputs/runs/*/checkpoint/*.partial"))


def test_closing_a_run_survives_a_failing_error_file(tmp_path, monkeypatch):
    """ENOSPC while writing error.txt must not keep the run from being terminated."""
    from ganlab.tracking.job_run import JobRun

    uri = new_store(tmp_path / "mlflow.db")
    run = JobRun(uri, "e", tmp_path / "out", "name", {})
    original = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "error.txt":
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(RuntimeError):
        with run:
            raise RuntimeError("boom")
    from mlflow.tracking import MlflowClient

    closed = MlflowClient(uri).get_run(run.run_id)
    assert closed.info.status == "FAILED" and closed.data.tags["failure_reason"] == "RuntimeError: boom"


# ---------------------------------------------------------------------------- servers and stores


@pytest.mark.bare_workdir
def test_an_experiment_name_cannot_escape_the_store(workdir):
    result = run_cli([*QUICK, "tracking.experiment=../../x"], workdir)
    assert result.returncode != 0 and "tracking.experiment: got '../../x'" in result.stderr
    assert not (workdir.parent / "x").exists() and not (workdir / "mlruns").exists()


@pytest.mark.bare_workdir
def test_a_garbage_store_file_is_named(workdir):
    (workdir / "mlruns").mkdir()
    (workdir / "mlruns" / "mlflow.db").write_bytes(b"this is not a database" * 100)
    result = run_cli(QUICK, workdir)
    assert result.returncode != 0 and "mlflow.db" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- resume checks what it resumes


def job_folders(cwd: Path) -> set[str]:
    return {path.name for path in (cwd / "outputs" / "runs").iterdir()} if (cwd / "outputs" / "runs").is_dir() else set()


def stand_in_run(cwd: Path, finished, folder: Path, tags: dict | None = None, own_checkpoint: bool = True) -> str:
    """A KILLED run of the finished run's store whose output_dir tag names `folder`; with its own
    stateless checkpoint there (the finished run's config) unless `own_checkpoint` is False."""
    client = store_client(cwd)
    run = client.create_run(finished.info.experiment_id, tags={"output_dir": str(folder), **(tags or {})})
    client.set_terminated(run.info.run_id, "KILLED")
    if own_checkpoint:
        theirs = checkpoint.find(Path(finished.data.tags["output_dir"]))
        meta = {"epoch": 0, "run_id": run.info.run_id, "tracking_uri": theirs.tracking_uri, "experiment": theirs.experiment,
                "threads": theirs.threads, "config": OmegaConf.to_container(theirs.config)}
        checkpoint.save(folder / checkpoint.FOLDER, [], [], meta)
    return run.info.run_id


@pytest.mark.parametrize("how", ["copy", "symlink"])
def test_resume_refuses_another_runs_checkpoint_and_changes_nothing(finished_run, tmp_path, how):
    cwd, finished = finished_run
    theirs = Path(finished.data.tags["output_dir"]) / checkpoint.FOLDER / checkpoint.FILE
    folder = tmp_path / how
    asked = stand_in_run(cwd, finished, folder, own_checkpoint=False)
    (folder / checkpoint.FOLDER).mkdir(parents=True)
    if how == "copy":
        shutil.copy2(theirs, folder / checkpoint.FOLDER / checkpoint.FILE)
    else:
        (folder / checkpoint.FOLDER / checkpoint.FILE).symlink_to(theirs)
    before = job_folders(cwd)
    result = run_cli([f"resume={asked}"], cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    if how == "copy":
        assert f"belongs to run {finished.info.run_id}, not to run {asked}" in line
    else:
        assert "is a link to" in line and "outside its folder" in line
    client = store_client(cwd)
    assert client.get_run(asked).info.status == "KILLED"
    again = client.get_run(finished.info.run_id)
    assert again.info.end_time == finished.info.end_time and again.data.tags["output_dir"] == finished.data.tags["output_dir"]
    assert job_folders(cwd) == before  # no folder for a refused resume


def test_resume_accepts_only_the_recorded_data_and_clears_the_failure_reason(finished_run, tmp_path):
    cwd, finished = finished_run
    recorded = finished.data.tags["data.sha256"]
    asked = stand_in_run(cwd, finished, tmp_path / "job",
                         tags={"data.sha256": recorded, "failure_reason": "interrupted (Ctrl-C or SIGTERM)"})
    other_data = Path(__file__).parent / "fixtures" / "mnist_small.npz"
    before = job_folders(cwd)
    result = run_cli([f"resume={asked}", f"data.path={other_data}"], cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert re.search(rf"data.path={re.escape(str(other_data))} now holds data with sha256 [0-9a-f]{{64}}, but run {asked} "
                     rf"trained on data with sha256 {recorded}", line)
    assert job_folders(cwd) == before
    assert store_client(cwd).get_run(asked).info.status == "KILLED"  # untouched
    # the same data under its own path is accepted, and the resumed run ends without the old reason
    result = run_cli([f"resume={asked}", f"data.path={MNIST_FILE}"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = store_client(cwd).get_run(asked)
    assert resumed.info.status == "FINISHED" and "failure_reason" not in resumed.data.tags
    assert resumed.data.tags["data.sha256"] == recorded


def test_resume_hashes_the_data_at_the_recorded_path_and_never_overwrites_its_tag(finished_run, tmp_path):
    cwd, finished = finished_run
    recorded = finished.data.tags["data.sha256"]
    swapped = tmp_path / "m.npz"  # the file the run trained on, replaced since by a 2,000-image subset
    shutil.copy2(Path(__file__).parent / "fixtures" / "mnist_small.npz", swapped)
    asked = stand_in_run(cwd, finished, tmp_path / "job", tags={"data.sha256": recorded})
    found = checkpoint.find(tmp_path / "job")
    meta = {"epoch": 0, "run_id": asked, "tracking_uri": found.tracking_uri, "experiment": found.experiment,
            "threads": found.threads, "config": {**OmegaConf.to_container(found.config), "data": {"name": "mnist", "path": str(swapped)}}}
    checkpoint.save(found.folder, [], [], meta)
    before = job_folders(cwd)
    result = run_cli([f"resume={asked}"], cwd)  # no data.path: the recorded one, hashed again
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert re.search(rf"data.path={re.escape(str(swapped))} now holds data with sha256 [0-9a-f]{{64}}, but run {asked} "
                     rf"trained on data with sha256 {recorded}", line), line
    assert job_folders(cwd) == before
    after = store_client(cwd).get_run(asked)
    assert after.info.status == "KILLED" and after.data.tags["data.sha256"] == recorded  # untouched


def test_a_moved_store_is_found_where_the_command_points_and_never_made_again_at_its_old_place(finished_run, tmp_path):
    cwd, finished = finished_run
    moved = tmp_path / "moved"
    shutil.copytree(cwd / "mlruns", moved / "mlruns")  # the store, moved (the original stays for the other tests)
    old_store = tmp_path / "old" / "mlruns" / "mlflow.db"  # where the checkpoint says it was
    asked = stand_in_run(moved, finished, tmp_path / "job", own_checkpoint=False)
    theirs = checkpoint.find(Path(finished.data.tags["output_dir"]))
    meta = {"epoch": 0, "run_id": asked, "tracking_uri": f"sqlite:///{old_store}", "experiment": theirs.experiment,
            "threads": theirs.threads, "config": OmegaConf.to_container(theirs.config)}
    checkpoint.save(tmp_path / "job" / checkpoint.FOLDER, [], [], meta)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    refused = run_cli([f"resume={tmp_path / 'job'}"], elsewhere)  # the folder alone: its recorded store is gone
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert f"the store sqlite:///{old_store} that holds run {asked} does not exist" in line and "tracking.uri=" in line
    assert not (tmp_path / "old").exists() and not (elsewhere / "mlruns").exists()

    moved_uri = f"sqlite:///{moved / 'mlruns' / 'mlflow.db'}"
    result = run_cli([f"resume={asked}", f"tracking.uri={moved_uri}"], elsewhere)  # by run id, in the store named
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "old").exists() and not (elsewhere / "mlruns").exists()
    resumed = store_client(moved).get_run(asked)
    assert resumed.info.status == "FINISHED" and steps(moved, asked) == [1, 2]
    new_folder = Path(re.search(r"job outputs in (\S+)", result.stdout).group(1))
    assert checkpoint.find(new_folder).tracking_uri == moved_uri  # the next resume finds it there too


def test_a_partial_file_left_by_kill_9_is_removed_on_resume_and_on_the_next_write(tmp_path):
    folder = tmp_path / "job" / checkpoint.FOLDER
    (tmp_path / "mlflow.db").touch()  # a resume writes into an existing store only
    meta = {"epoch": 1, "run_id": "r", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "e",
            "threads": 1, "config": {"epochs": 3}}
    checkpoint.save(folder, [np.zeros(2)], [], meta)
    (folder / ".checkpoint-killed.partial").write_bytes(b"half a checkpoint")
    resumed = prepare_resume(OmegaConf.create({"resume": str(folder.parent), "tracking": {"uri": None}}), [])
    resumed.lock.release()
    assert sorted(path.name for path in folder.iterdir()) == [checkpoint.FILE, checkpoint.LOCK_FILE]
    (folder / ".checkpoint-killed.partial").write_bytes(b"half a checkpoint")
    checkpoint.save(folder, [np.ones(2)], [], {**meta, "epoch": 2})
    assert not list(folder.glob(checkpoint.PARTIAL_PATTERN))


def test_a_stop_during_a_store_write_takes_effect_as_the_write_returns_and_the_run_ends_killed(tmp_path):
    """SIGTERM handled inside a write to the SQLite store: raised there, in SQLite's executemany, it once left the
    write's transaction open and the store locked, so the run's closing could not mark it KILLED and it stayed
    RUNNING. Now the write completes, then the job stops, and its run is KILLED."""
    from mlflow.entities import Metric

    from ganlab.tracking.job_run import JobRun
    from ganlab.tracking.store import store_call
    from ganlab.training.job import signals_as_interrupt

    uri = new_store(tmp_path / "mlruns" / "mlflow.db")

    def write_while_stopped(run):
        os.kill(os.getpid(), signal.SIGTERM)  # the job's handler runs here, before the write below
        run.client.log_batch(run.run_id, metrics=[Metric("d_loss", 0.5, 0, 1)])
        return "written"

    written = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with signals_as_interrupt(), JobRun(uri, "ganlab", tmp_path / "out", "stopped", {}) as run:
            written.append(store_call(uri, lambda: write_while_stopped(run)))
    assert written == []  # the stop ended the job as the call returned
    client = store_client(tmp_path)
    assert [point.step for point in client.get_metric_history(run.run_id, "d_loss")] == [1]  # the write is whole
    assert client.get_run(run.run_id).info.status == "KILLED"


def test_a_preemption_handler_runs_after_the_store_write_and_slurms_sigterm_cannot_cut_it_short(tmp_path):
    """A scheduler's preemption handler (submitit's, for SIGUSR2 on SLURM: it requeues the job, says so, exits) is
    the job's stop: held over a store write like SIGTERM, and not cut short by the SIGTERM SLURM sends once the job
    is requeued. That SIGTERM once arrived between the requeue and its log line: the job then ended as interrupted,
    without the line. Here the handler is a stand-in that gets that SIGTERM while it works."""
    from mlflow.entities import Metric

    from ganlab.tracking.job_run import JobRun
    from ganlab.tracking.store import store_call
    from ganlab.training.job import signals_as_interrupt

    uri = new_store(tmp_path / "mlruns" / "mlflow.db")
    done = []

    def requeue_and_exit(signum, frame):
        done.append("requeued")
        os.kill(os.getpid(), signal.SIGTERM)  # what SLURM sends a job it requeues: the job's handler runs here
        done.append("said so")
        sys.exit(-1)

    def write_while_preempted(run):
        os.kill(os.getpid(), signal.SIGUSR2)  # the preemption's signal arrives as the write begins
        run.client.log_batch(run.run_id, metrics=[Metric("d_loss", 0.5, 0, 1)])
        done.append("written")

    scheduler = signal.signal(signal.SIGUSR2, requeue_and_exit)  # set before the job starts, as submitit does
    try:
        with pytest.raises(BaseException) as ended:  # a KeyboardInterrupt would end pytest itself
            with signals_as_interrupt(), JobRun(uri, "ganlab", tmp_path / "out", "preempted", {}) as run:
                store_call(uri, lambda: write_while_preempted(run))
        assert ended.type is SystemExit, repr(ended.value)  # the handler's exit, not SIGTERM's interrupt
        assert signal.getsignal(signal.SIGUSR2) is requeue_and_exit  # the scheduler's handler is back
    finally:
        signal.signal(signal.SIGUSR2, scheduler)
    assert done == ["written", "requeued", "said so"]
    client = store_client(tmp_path)
    assert [point.step for point in client.get_metric_history(run.run_id, "d_loss")] == [1]  # the write is whole
    stopped = client.get_run(run.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["failure_reason"] == "preempted: requeued by the scheduler"


def test_a_stop_while_a_generator_is_logged_takes_effect_once_it_is_logged_whole(tmp_path):
    """Logging a model writes the store several times (the logged model, its metrics, its files): a stop that
    arrives during it waits for the model to be logged whole, then ends the job, and the run is KILLED."""
    import keras

    from ganlab.tracking.job_run import JobRun
    from ganlab.training.job import signals_as_interrupt

    uri = new_store(tmp_path / "mlruns" / "mlflow.db")
    generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    example = np.zeros((2, 4), np.float32)
    logged = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with signals_as_interrupt(), JobRun(uri, "ganlab", tmp_path / "out", "stopped", {}) as run:
            create = run.client.create_logged_model

            def create_while_stopped(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGTERM)  # the job's handler runs here, as the model's logging begins
                return create(*args, **kwargs)

            run.client.create_logged_model = create_while_stopped
            logged.append(run.log_model(generator, "generator", example, step=1))
    assert logged == []  # the stop ended the job as the logging returned
    client = store_client(tmp_path)
    (model,) = client.search_logged_models([client.get_experiment_by_name("ganlab").experiment_id])
    assert model.name == "generator" and model.source_run_id == run.run_id and str(model.status) == "READY"
    assert client.get_run(run.run_id).info.status == "KILLED"

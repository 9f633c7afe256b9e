"""Crash-safe checkpoints and resume: kill -9 at any moment, finished runs, concurrent resumes,
the checkpoint's own config and store, damaged files, full disks, hanging servers."""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import EVAL_CACHE, MNIST_FILE, QUICK, all_runs, run_cli, small_disk, store_client, store_is_ready
from ganlab.training import checkpoint
from ganlab.core.errors import InputError

TINY_EPOCHS = ["steps_per_epoch=1", "eval.enabled=false", "objective=g_loss", f"data.path={MNIST_FILE}"]


def start(args, cwd: Path) -> subprocess.Popen:
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GANLAB_CACHE_DIR": str(EVAL_CACHE)}
    return subprocess.Popen([sys.executable, "-m", "ganlab.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def the_run(cwd: Path):
    if not store_is_ready(cwd):
        return None
    runs = all_runs(cwd)
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
    checkpoint.save(folder, [np.zeros(2)], [], {"epoch": 1, "run_id": "r", "tracking_uri": "sqlite:///x",
                                                "experiment": "e", "threads": 1, "config": {"epochs": 3}})
    held = checkpoint.FolderLock(folder).acquire()
    cfg = OmegaConf.create({"resume": str(folder.parent), "tracking": {"uri": None}})
    try:
        with pytest.raises(InputError, match="in use by a running job"):
            checkpoint.prepare_resume(cfg, [])
    finally:
        held.release()
    resumed = checkpoint.prepare_resume(cfg, [])
    assert resumed.config.threads == 1 and resumed.config.tracking.uri == "sqlite:///x"
    resumed.lock.release()


# ---------------------------------------------------------------------------- kill -9 and resume


def test_kill_9_at_random_moments_then_resume_logs_every_epoch_exactly_once(workdir):
    """Each kill lands at a random moment after the run exists; `resume=<run id>` alone mends it."""
    epochs = 8
    rng = random.Random(0)
    process = start([f"epochs={epochs}", *TINY_EPOCHS], workdir)
    # From the first checkpoint on (written as soon as the run exists), any moment is resumable.
    assert wait_for(lambda: list(workdir.glob("outputs/runs/*/checkpoint/checkpoint.npz")), process)
    run_id = the_run(workdir).info.run_id
    for _ in range(3):
        deadline = time.monotonic() + rng.uniform(0.5, 6.0)
        while process.poll() is None and time.monotonic() < deadline:  # a random moment to kill at
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()  # SIGKILL: nothing can be caught
        process.communicate()
        process = start([f"resume={run_id}"], workdir)
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    finished = store_client(workdir).get_run(run_id)
    assert finished.info.status == "FINISHED"
    for metric in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert steps(workdir, run_id, metric) == list(range(1, epochs + 1)), metric
    output_dir = Path(finished.data.tags["output_dir"])
    per_step = np.loadtxt(output_dir / "losses.csv", delimiter=",", skiprows=1)
    assert list(per_step[:, 0]) == list(range(1, epochs + 1))  # one step per epoch, every epoch


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
    for override in ("dropout=0.5", "tracking.experiment=other", "epochs=3"):
        result = run_cli([f"resume={run.info.run_id}", override], cwd)
        assert result.returncode != 0 and override in result.stderr, override
        assert "Only data.path, tracking.uri, threads may be given with resume" in result.stderr


@pytest.fixture(scope="module")
def killed_threads_1_run(tmp_path_factory):
    """A job with threads=1 in its own experiment, SIGTERMed after epoch 1, and the same job uninterrupted."""
    cwd = tmp_path_factory.mktemp("threads1")
    args = ["epochs=3", "steps_per_epoch=40", "threads=1", "tracking.experiment=elsewhere", "ema=0.999",
            "eval.enabled=false", "objective=g_loss", f"data.path={MNIST_FILE}"]
    (cwd / "whole").mkdir()
    whole = run_cli(args, cwd / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed_cwd = cwd / "killed"
    killed_cwd.mkdir()
    process = start(args, killed_cwd)
    client_dir = killed_cwd

    def epoch_one_logged():
        if not store_is_ready(client_dir):
            return False
        client = store_client(client_dir)
        experiment = client.get_experiment_by_name("elsewhere")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return runs and 1 in {p.step for p in client.get_metric_history(runs[0].info.run_id, "d_loss")} and runs[0]

    run = wait_for(epoch_one_logged, process)
    assert run, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=300)
    output_dir = Path(re.search(r"job outputs in (\S+)", whole.stdout).group(1))
    return cwd, killed_cwd, run, output_dir


def test_a_resume_while_the_job_runs_is_refused(tmp_path):
    process = start(["epochs=50", "steps_per_epoch=20", "eval.enabled=false", "objective=g_loss",
                     f"data.path={MNIST_FILE}"], tmp_path)
    try:
        run = wait_for(lambda: (r := the_run(tmp_path)) and steps(tmp_path, r.info.run_id) and r, process)
        assert run, process.communicate()[1][-2000:]
        result = run_cli([f"resume={run.info.run_id}"], tmp_path)
        assert result.returncode != 0 and "in use by a running job" in result.stderr
        assert process.poll() is None  # the running job went on
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=300)
    assert store_client(tmp_path).get_run(run.info.run_id).info.status == "KILLED"


def test_resume_from_another_folder_uses_the_checkpoints_store_threads_and_data(killed_threads_1_run, tmp_path):
    cwd, killed_cwd, run, uninterrupted_dir = killed_threads_1_run
    folder = Path(run.data.tags["output_dir"])
    result = run_cli([f"resume={folder}"], tmp_path)  # no data.path, no threads, no tracking: all from the checkpoint
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "mlruns").exists()  # nothing went to this folder's default store
    resumed = store_client(killed_cwd).get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.params["threads"] == "1"
    assert steps(killed_cwd, run.info.run_id) == [1, 2, 3]
    new_dir = Path(re.search(r"job outputs in (\S+)", result.stdout).group(1))
    assert resumed.data.tags["output_dir"] == str(new_dir)
    # threads=1 came from the checkpoint, so the numbers are those of the uninterrupted threads=1 job ...
    np.testing.assert_array_equal(np.loadtxt(new_dir / "losses.csv", delimiter=",", skiprows=1),
                                  np.loadtxt(uninterrupted_dir / "losses.csv", delimiter=",", skiprows=1))
    # ... and the EMA of G continued exactly across the kill.
    import keras

    for name in ("generator_ema.keras", "generator.keras"):
        resumed_net = keras.models.load_model(new_dir / "models" / name)
        whole_net = keras.models.load_model(uninterrupted_dir / "models" / name)
        for a, b in zip(resumed_net.get_weights(), whole_net.get_weights()):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- nothing left RUNNING


def test_sigterm_to_a_sequential_sweep_leaves_no_run_running(workdir):
    process = start(["-m", "dropout=0.1,0.2,0.3", "epochs=20", "steps_per_epoch=20", "eval.enabled=false",
                     "objective=g_loss", f"data.path={MNIST_FILE}"], workdir)

    def first_child_trains():
        if not store_is_ready(workdir):
            return False
        children = [r for r in all_runs(workdir) if "mlflow.parentRunId" in r.data.tags]
        return children and steps(workdir, children[0].info.run_id)

    assert wait_for(first_child_trains, process), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=300)
    assert process.returncode != 0
    statuses = {run.info.run_id: run.info.status for run in all_runs(workdir)}
    assert len(statuses) == 2 and "RUNNING" not in statuses.values(), statuses
    assert set(statuses.values()) == {"KILLED"}


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

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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


class StubServer(http.server.ThreadingHTTPServer):
    """Answers /health; its API either hangs (never answers) or fails with 500."""

    daemon_threads = True

    def __init__(self, mode: str):
        self.mode = mode
        self.release = threading.Event()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.startswith("/health"):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"OK")
                    return
                self.answer_api()

            do_POST = do_GET

            def answer_api(self):
                if stub.mode == "hang":
                    stub.release.wait(600)  # until the test ends
                    return
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"error_code": "INTERNAL_ERROR", "message": "stub"}).encode())

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.parametrize("mode", ["hang", "fail"])
def test_a_server_whose_api_hangs_or_fails_stops_the_job_with_a_message(workdir, mode):
    server = StubServer(mode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        result = run_cli([*QUICK, f"tracking.uri={uri}"], workdir, timeout=600)
        elapsed = time.monotonic() - started
    finally:
        server.release.set()
        server.shutdown()
    assert result.returncode != 0
    assert f"tracking.uri: the MLflow store {uri}" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 120, f"took {elapsed:.0f} s"  # the bound: MLflow's default waits many minutes


def test_an_experiment_name_cannot_escape_the_store(workdir):
    result = run_cli([*QUICK, "tracking.experiment=../../x"], workdir)
    assert result.returncode != 0 and "tracking.experiment: got '../../x'" in result.stderr
    assert not (workdir.parent / "x").exists() and not (workdir / "mlruns").exists()


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
    assert re.search(rf"data.path={re.escape(str(other_data))} holds data with sha256 [0-9a-f]{{64}}, but run {asked} "
                     rf"trained on data with sha256 {recorded}", line)
    assert job_folders(cwd) == before
    assert store_client(cwd).get_run(asked).info.status == "KILLED"  # untouched
    # the same data under its own path is accepted, and the resumed run ends without the old reason
    result = run_cli([f"resume={asked}", f"data.path={MNIST_FILE}"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = store_client(cwd).get_run(asked)
    assert resumed.info.status == "FINISHED" and "failure_reason" not in resumed.data.tags
    assert resumed.data.tags["data.sha256"] == recorded


def test_a_partial_file_left_by_kill_9_is_removed_on_resume_and_on_the_next_write(tmp_path):
    folder = tmp_path / "job" / checkpoint.FOLDER
    meta = {"epoch": 1, "run_id": "r", "tracking_uri": "sqlite:///x", "experiment": "e", "threads": 1, "config": {"epochs": 3}}
    checkpoint.save(folder, [np.zeros(2)], [], meta)
    (folder / ".checkpoint-killed.partial").write_bytes(b"half a checkpoint")
    resumed = checkpoint.prepare_resume(OmegaConf.create({"resume": str(folder.parent), "tracking": {"uri": None}}), [])
    resumed.lock.release()
    assert sorted(path.name for path in folder.iterdir()) == [checkpoint.FILE, checkpoint.LOCK_FILE]
    (folder / ".checkpoint-killed.partial").write_bytes(b"half a checkpoint")
    checkpoint.save(folder, [np.ones(2)], [], {**meta, "epoch": 2})
    assert not list(folder.glob(checkpoint.PARTIAL_PATTERN))

"""Nothing lost: kills and resumes, unreachable stores, bad files (concurrent writers and a diverged job: test_sweep.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import (MNIST_FILE, QUICK, REPO, MlflowStub, all_runs, cli_env, ctrl_c_as_in_a_terminal, new_store,
                      run_cli, small_disk, start_cli, store_is_ready)


def test_resume_of_unknown_run_or_folder(workdir):
    result = run_cli(["resume=0123456789abcdef", f"data.path={MNIST_FILE}"], workdir)
    assert result.returncode != 0 and "resume: no MLflow run '0123456789abcdef'" in result.stderr
    empty = workdir / "empty"
    empty.mkdir()
    result = run_cli([f"resume={empty}", f"data.path={MNIST_FILE}"], workdir)
    assert result.returncode != 0 and "resume: no checkpoint in" in result.stderr


@pytest.mark.bare_workdir
def test_unreachable_tracking_server_fails_fast_and_stores_nothing(workdir):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli([*QUICK, f"tracking.uri=http://127.0.0.1:{port}"], workdir)
    assert result.returncode != 0
    # fast: refused at its first request, a refused connection (not MLflow's minutes of retries), before training
    assert f"tracking.uri: no MLflow server answers at http://127.0.0.1:{port} (ConnectionError)" in result.stderr
    assert "training" not in result.stdout + result.stderr and "Retry" not in result.stderr
    assert not (workdir / "mlruns").exists() and not list(workdir.glob("outputs/runs/*/models"))


def test_unwritable_output_folder(workdir):
    result = run_cli([*QUICK, "hydra.run.dir=/proc/ganlab-output"], workdir)
    assert result.returncode != 0
    assert "/proc/ganlab-output" in result.stderr
    assert all_runs(workdir) == []


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_missing_or_altered_classifier_weights_fail_the_run(workdir, damage):
    weights = workdir / "classifier" / "mnist_classifier.weights.h5"
    shutil.copytree(REPO / "ganlab" / "weights", weights.parent)
    if damage == "missing":
        weights.unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        weights.write_bytes(bytes(data))
    result = run_cli([*QUICK, f"eval.classifier={weights}"], workdir, tell_if_tensorflow_loaded=True)
    assert result.returncode != 0
    expected = "not found" if damage == "missing" else "were altered"
    assert expected in result.stderr
    assert result.stdout.splitlines()[-1] == "tensorflow loaded: False"  # refused before TensorFlow's start-up
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED" and expected in run.data.tags["failure_reason"]


# ---------------------------------------------------------------------------- the store failing after the run exists


@pytest.mark.heavy
@pytest.mark.parametrize("mode", ["hang", "fail"])
def test_a_server_that_hangs_or_fails_before_or_after_the_run_exists_ends_the_job_with_one_line(workdir, mode):
    """Before the run exists (the store opened in-process, as a job opens it) the failure is a StoreError
    within the bound; after it (a real job), one line, and in "fail" mode the run marked FAILED."""
    from ganlab.tracking.store import HANG_BOUND_S, StoreError, open_store

    with MlflowStub(mode, run_exists=False) as before:
        with pytest.raises(StoreError) as failed:
            open_store(before.uri, "ganlab")
        if mode == "hang":  # one request and its one retry (MLflow's own default retries for many minutes)
            assert len(before.hung) == 2 and before.hung[0] == before.hung[1], before.hung
    assert str(failed.value).startswith(f"tracking.uri: the MLflow store {before.uri} failed: ")

    with MlflowStub(mode) as server:
        uri = server.uri
        result = run_cli(["epochs=2", "steps_per_epoch=1", "eval.enabled=false", "objective=g_loss",
                          f"data.path={MNIST_FILE}", f"tracking.uri={uri}"], workdir, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking.uri: the MLflow store {uri} failed: ")
    for message in (line, str(failed.value)):
        if mode == "hang":
            assert "did not answer within MLFLOW_HTTP_REQUEST_TIMEOUT=" in message
        else:
            assert "answered every try with an error (HTTP 5xx)" in message
    if mode == "hang":
        assert "did not answer within MLFLOW_HTTP_REQUEST_TIMEOUT=10 s" in line  # the job's own bound
        assert "could not be marked FAILED" in line and "mlflow runs delete --run-id stubrun" in line
        # The bound as events, not a clock (a loaded machine stretches the job's own work): the one request
        # that hung, its one retry and the one short closing try, whose timeouts add up within the bound.
        from ganlab.tracking.store import CLOSING_WAITS, SERVER_WAIT_DEFAULTS

        assert len(server.hung) == 3 and server.hung[0] == server.hung[1], server.hung
        tries = 1 + int(SERVER_WAIT_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
        waited = tries * int(SERVER_WAIT_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]) + int(CLOSING_WAITS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
        assert waited < HANG_BOUND_S  # the documented bound leaves the job's own work 20 s
    else:
        assert "could not be marked" not in line
        assert [update.get("status") for update in server.updates] == ["FAILED"]


def sqlite_error(text: str):
    """The error MLflow's SQLite store raises for `text`, as it raises it."""
    import sqlite3

    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    cause = sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, sqlite3.OperationalError(text))
    return MlflowException(f"({type(cause.orig).__module__}.{type(cause.orig).__name__}) {text}\n[SQL: INSERT ...]")


@pytest.mark.parametrize("text, cause, markable", [
    ("database or disk is full", "the disk holding it is full", False),
    ("attempt to write a readonly database", "it cannot be written (a read-only folder or file?)", False),
    ("unable to open database file", "it cannot be written (a read-only folder or file?)", True),
])
def test_a_failing_sqlite_store_ends_in_one_line_and_the_run_failed_when_it_can_be_written(tmp_path, text, cause, markable):
    from mlflow.tracking import MlflowClient

    from ganlab.tracking.job_run import JobRun
    from ganlab.tracking.store import StoreError

    uri = new_store(tmp_path / "mlflow.db")
    run = JobRun(uri, "e", tmp_path / "out", "name", {})
    (tmp_path / "out").mkdir()
    with pytest.raises(StoreError) as raised:
        with run:
            run.log_metrics({"d_loss": 1.0}, step=1)
            original = run.client.log_batch

            def failing(*args, **kwargs):
                raise sqlite_error(text)

            run.client.log_batch = failing
            if not markable:  # the whole store is unwritable: closing fails too
                run.client.set_terminated = failing
            run.log_metrics({"d_loss": 2.0}, step=2)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"tracking.uri: the MLflow store {uri} failed: {cause}")
    closed = MlflowClient(uri).get_run(run.run_id)
    if markable:
        run.client.log_batch = original
        assert closed.info.status == "FAILED" and run.marked
    else:
        assert closed.info.status == "RUNNING" and run.marked is False
        assert f"Run {run.run_id} could not be marked FAILED" in message and "mlflow runs delete" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_the_sqlite_stores_disk_filling_up_mid_run_is_one_line_and_resume_mends_it(tmp_path):
    with small_disk(tmp_path / "store", "120m") as store:
        uri = f"sqlite:///{store / 'mlflow.db'}"
        process = start_cli(["epochs=3", "steps_per_epoch=5", "eval.enabled=false", "objective=g_loss",
                             f"data.path={MNIST_FILE}", f"tracking.uri={uri}"], tmp_path)
        deadline = time.monotonic() + 900
        while not store_is_ready(tmp_path):  # the event: the run exists and has its first checkpoint
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.1)
        with open(store / "filler", "wb") as filler:  # fill the store's disk
            try:
                while True:
                    filler.write(b"\0" * (1 << 20))
                    filler.flush()
            except OSError:
                pass
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 1 and "Traceback" not in stderr
        (line,) = stderr.strip().splitlines()
        assert line.startswith(f"error: tracking.uri: the MLflow store {uri} failed: the disk holding it is full")
        (store / "filler").unlink()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("ganlab").experiment_id])
        if run.info.status == "RUNNING":  # it could not be marked: the line says how to mend it
            assert f"Run {run.info.run_id} could not be marked FAILED" in line
        else:
            assert run.info.status == "FAILED"
        result = run_cli([f"resume={run.info.run_id}", f"tracking.uri={uri}"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        mended = client.get_run(run.info.run_id)
        assert mended.info.status == "FINISHED" and "failure_reason" not in mended.data.tags
        assert [p.step for p in client.get_metric_history(run.info.run_id, "d_loss")] == [1, 2, 3]


# ---------------------------------------------------------------------------- the entry point reads nothing unchecked


@pytest.mark.bare_workdir
@pytest.mark.parametrize("override, expected, failed_run", [
    # a job value that cannot be resolved is the job's bad input: recorded as a FAILED run (every unresolvable
    # value is one line, a non-zero exit and a FAILED run where a run exists)
    ("epochs=${oc.env:NOPE_NOT_SET}", "error: epochs: cannot be resolved (InterpolationResolutionError", True),
    # a knob ganlab does not have is refused before anything is created
    ("+extra.key=1", "error: +extra.key=1: extra.key is not a ganlab knob", False),
])
def test_the_entry_point_refuses_unresolvable_and_unknown_keys_in_one_line(workdir, override, expected, failed_run):
    result = run_cli([*QUICK, override], workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(expected)
    if failed_run:
        (run,) = all_runs(workdir)
        assert run.info.status == "FAILED"
    else:
        assert not (workdir / "mlruns").exists() and not list(workdir.glob("outputs/runs/*"))


def test_sigint_during_the_imports_is_one_line(workdir):
    """The event: -X importtime says omegaconf is imported, so ganlab.train's imports are under way."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "ganlab.train", *QUICK], cwd=workdir, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_as_in_a_terminal)
    for line in process.stderr:
        if line.startswith("import time:") and line.split("|")[-1].strip() == "omegaconf":
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    process.wait(timeout=300)
    lines = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert process.returncode == 130 and "Traceback" not in rest
    assert len(lines) == 1 and lines[0].startswith("ganlab: interrupted by SIGINT (Ctrl-C)"), lines


# ---------------------------------------------------------------------------- small things


def test_replaced_shipped_classifier_weights_and_json_are_refused(tmp_path, monkeypatch):
    import json

    from ganlab.evaluation import classifier
    from ganlab.core.errors import InputError

    assert classifier.file_sha256(classifier.DEFAULT_WEIGHTS) == classifier.SHIPPED_WEIGHTS_SHA256
    weights = tmp_path / classifier.DEFAULT_WEIGHTS.name
    data = bytearray(classifier.DEFAULT_WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    info = json.loads(classifier.metadata_path(classifier.DEFAULT_WEIGHTS).read_text())
    classifier.metadata_path(weights).write_text(json.dumps({**info, "weights_sha256": classifier.file_sha256(weights)}))
    monkeypatch.setattr(classifier, "DEFAULT_WEIGHTS", weights)  # both files replaced, and they agree
    with pytest.raises(InputError, match="were altered: their sha256 is .*, not the shipped"):
        classifier.check(None, "mnist")


def test_a_file_store_uri_is_refused_with_the_reason():
    from omegaconf import OmegaConf

    from ganlab.core import config
    from ganlab.core.errors import InputError

    cfg = OmegaConf.create({"tracking": {"uri": "file:///tmp/mlruns", "experiment": "ganlab", "register_model": None,
                                         "system_metrics": True}})
    with pytest.raises(InputError, match="MLflow 3 no longer stores runs in a file: folder"):
        config.validate_tracking(cfg)
    assert "file" not in config.TRACKING_SCHEMES


def test_evaluate_names_its_own_option_for_an_unreachable_server():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli(["--run-id", "0123456789abcdef", "--tracking-uri", f"http://127.0.0.1:{port}"], REPO,
                     module="ganlab.evaluate")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: --tracking-uri: no MLflow server answers at http://127.0.0.1:{port}")


def test_a_store_that_fails_only_when_the_run_is_closed_is_one_line_not_a_silent_running_run(tmp_path):
    from ganlab.tracking.job_run import JobRun
    from ganlab.tracking.store import StoreError

    uri = new_store(tmp_path / "mlflow.db")
    run = JobRun(uri, "e", tmp_path / "out", "name", {})
    with pytest.raises(StoreError) as raised:
        with run:
            run.log_metrics({"d_loss": 1.0}, step=1)

            def failing(*args, **kwargs):
                raise sqlite_error("database or disk is full")

            run.client.set_terminated = failing
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"tracking.uri: the MLflow store {uri} failed: the disk holding it is full")
    assert f"Run {run.run_id} could not be marked FINISHED" in message and run.marked is False


def test_a_stop_whose_run_cannot_be_marked_killed_says_so_instead_of_marked(tmp_path):
    from ganlab.core.errors import RunNotMarked
    from ganlab.tracking.job_run import JobRun
    from ganlab.train import stopped_job_line

    uri = new_store(tmp_path / "mlflow.db")
    run = JobRun(uri, "e", tmp_path / "out", "name", {})
    stopped = None
    try:  # a stop that got out as a plain KeyboardInterrupt must fail this test, not end the test session
        with run:
            def failing(*args, **kwargs):
                raise sqlite_error("database is locked")

            run.client.set_terminated = failing
            raise KeyboardInterrupt("SIGTERM")
    except KeyboardInterrupt as raised:
        stopped = raised
    assert isinstance(stopped, RunNotMarked) and str(stopped) == "SIGTERM" and run.marked is False
    line = stopped_job_line(stopped, tmp_path / "out")
    assert "\n" not in line and "marked KILLED;" not in line
    assert f"Run {run.run_id} could not be marked KILLED there, so it may still show RUNNING" in line
    assert "database is locked" in line and f"mlflow runs delete --run-id {run.run_id}" in line  # no checkpoint yet
    (tmp_path / "out" / "checkpoint").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint" / "checkpoint.npz").write_bytes(b"")
    assert stopped_job_line(KeyboardInterrupt("SIGTERM"), tmp_path / "out").startswith(": its run is marked KILLED; resume=")


@pytest.mark.bare_workdir
def test_bad_store_uris_are_one_line_and_create_nothing_outside_the_working_folder(workdir):
    here = workdir / "a" / "b"
    here.mkdir(parents=True)
    for uri, expected in (("sqlite:///../../evil.db", "error: tracking.uri: the SQLite path '../../evil.db' is relative "
                                                      "and leads out of the working folder"),
                          ("mysql://user:pw@localhost/db", "error: tracking.uri: mysql:// stores need a database driver "
                                                           "that is not installed")):
        result = run_cli([*QUICK, f"tracking.uri={uri}"], here)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(expected), line
        assert sorted(path.name for path in workdir.rglob("*") if here not in path.parents and path != here) == ["a"]
        assert not (here / "mlruns").exists()

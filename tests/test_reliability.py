"""Nothing lost: kills and resumes, divergence, unreachable stores, bad files, concurrent writers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EVAL_CACHE, MNIST_FILE, QUICK, REPO, all_runs, run_cli, store_client, store_is_ready

# Long enough epochs that a SIGTERM lands mid-epoch; evaluation off to keep it short.
KILLABLE = ["epochs=3", "steps_per_epoch=60", "eval.enabled=false", "objective=g_loss", f"data.path={MNIST_FILE}"]


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GANLAB_CACHE_DIR": str(EVAL_CACHE)}
    return subprocess.Popen([sys.executable, "-m", "ganlab.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_logged_epoch(process: subprocess.Popen, cwd: Path, epoch: int, deadline_s: float = 900) -> None:
    """Wait for the event "epoch N's metrics are in the store" (polled; the deadline only guards a hang)."""
    deadline = time.monotonic() + deadline_s
    while True:
        assert process.poll() is None, process.communicate()[1][-2000:]
        runs = all_runs(cwd) if store_is_ready(cwd) else []
        if runs and epoch in {p.step for p in store_client(cwd).get_metric_history(runs[0].info.run_id, "d_loss")}:
            return
        assert time.monotonic() < deadline, "the job never logged its epoch"
        time.sleep(0.2)


def kill_after_first_epoch(cwd: Path) -> tuple[subprocess.Popen, Path]:
    process = start_cli(KILLABLE, cwd)
    wait_for_logged_epoch(process, cwd, 1)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=300)
    return process, next(cwd.glob("outputs/runs/*/checkpoint")).parent


def per_step_losses(output_dir: Path) -> np.ndarray:
    return np.loadtxt(output_dir / "losses.csv", delimiter=",", skiprows=1)


def job_dir(stdout: str) -> Path:
    return Path(re.search(r"job outputs in (\S+)", stdout).group(1))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(KILLABLE, cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return job_dir(result.stdout)


@pytest.mark.parametrize("resume_by", ["run_id", "folder"])
def test_killed_run_resumes_into_the_same_run_with_the_same_numbers(workdir, uninterrupted, resume_by):
    process, first_dir = kill_after_first_epoch(workdir)
    assert process.returncode != 0
    (killed,) = all_runs(workdir)
    assert killed.info.status == "KILLED"
    assert "interrupted" in killed.data.tags["failure_reason"]
    client = store_client(workdir)
    kept = [point.step for point in client.get_metric_history(killed.info.run_id, "d_loss")]
    assert kept and kept == list(range(1, len(kept) + 1)) and len(kept) < 3

    target = killed.info.run_id if resume_by == "run_id" else str(first_dir)
    result = run_cli([f"resume={target}", f"data.path={MNIST_FILE}"], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    (resumed,) = all_runs(workdir)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    for metric in ("d_loss", "g_loss", "d_real", "steps_per_sec"):
        assert [point.step for point in client.get_metric_history(resumed.info.run_id, metric)] == [1, 2, 3]
    assert resumed.data.tags["resumed_from_epoch"] == str(len(kept))
    # With determinism on, resuming changes nothing: every step's losses match an uninterrupted run.
    np.testing.assert_array_equal(per_step_losses(job_dir(result.stdout)), per_step_losses(uninterrupted))


def test_same_seed_in_two_processes_logs_identical_metrics(workdir, uninterrupted):
    result = run_cli(KILLABLE, workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(per_step_losses(job_dir(result.stdout)), per_step_losses(uninterrupted))
    first_store = uninterrupted.parents[2]  # <cwd>/outputs/runs/<job>
    (first,), (second,) = all_runs(first_store), all_runs(workdir)
    for metric in ("d_loss", "g_loss", "d_real", "d_fake"):
        values = [[p.value for p in store_client(cwd).get_metric_history(run.info.run_id, metric)]
                  for cwd, run in ((first_store, first), (workdir, second))]
        assert len(values[0]) == 3 and values[0] == values[1], metric


def test_resume_refuses_a_config_change(workdir, uninterrupted):
    result = run_cli([f"resume={uninterrupted}", "dropout=0.5"], workdir)
    assert result.returncode != 0
    assert "resume: a resumed job trains with its checkpoint's config" in result.stderr and "dropout=0.5" in result.stderr


def test_resume_of_unknown_run_or_folder(workdir):
    result = run_cli(["resume=0123456789abcdef", f"data.path={MNIST_FILE}"], workdir)
    assert result.returncode != 0 and "resume: no MLflow run '0123456789abcdef'" in result.stderr
    empty = workdir / "empty"
    empty.mkdir()
    result = run_cli([f"resume={empty}", f"data.path={MNIST_FILE}"], workdir)
    assert result.returncode != 0 and "resume: no checkpoint in" in result.stderr


def test_divergence_fails_the_run_and_names_the_step(workdir):
    result = run_cli([*QUICK, "optimizer.lr=1e10", "eval.enabled=false", "objective=g_loss"], workdir)
    assert result.returncode != 0
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED"
    assert re.search(r"training diverged at epoch 1, step \d+ of 5", run.data.tags["failure_reason"])
    assert "Traceback" not in result.stderr


def test_sweep_goes_on_after_a_diverged_job(workdir):
    result = run_cli(["-m", "optimizer.lr=1e10,2e-4", *QUICK], workdir)
    assert result.returncode != 0
    statuses = {run.data.params.get("optimizer.lr"): run.info.status for run in all_runs(workdir) if "sweep.job_num" in run.data.tags}
    assert statuses == {"10000000000.0": "FAILED", "0.0002": "FINISHED"}


def test_unreachable_tracking_server_fails_fast_and_stores_nothing(workdir):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    result = run_cli([*QUICK, f"tracking.uri=http://127.0.0.1:{port}"], workdir)
    assert time.monotonic() - started < 60
    assert result.returncode != 0
    assert f"tracking.uri: no MLflow server answers at http://127.0.0.1:{port}" in result.stderr
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
    result = run_cli([*QUICK, f"eval.classifier={weights}"], workdir)
    assert result.returncode != 0
    expected = "not found" if damage == "missing" else "were altered"
    assert expected in result.stderr
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED" and expected in run.data.tags["failure_reason"]


def test_eight_parallel_jobs_into_one_fresh_store(workdir):
    args = ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=8", "seed=range(0,8)", *QUICK,
            "epochs=2", "steps_per_epoch=3", "eval.enabled=false", "objective=g_loss"]
    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    client = store_client(workdir)
    children = [run for run in all_runs(workdir) if "sweep.job_num" in run.data.tags]
    assert sorted(int(run.data.params["seed"]) for run in children) == list(range(8))
    assert all(run.info.status == "FINISHED" for run in children)
    for run in children:
        for metric in ("d_loss", "g_loss", "d_real", "d_fake", "steps_per_sec"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == 2


def test_two_sweeps_at_once_into_one_store(workdir):
    args = ["-m", "dropout=0.1,0.2", *QUICK, "epochs=1", "steps_per_epoch=3", "eval.enabled=false", "objective=g_loss"]
    processes = [start_cli(args, workdir), start_cli(args, workdir)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    runs = all_runs(workdir)
    parents = [run for run in runs if run.data.tags.get("sweep.parent") == "true"]
    children = [run for run in runs if "sweep.job_num" in run.data.tags]
    assert len(parents) == 2 and len(children) == 4
    for parent in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert sorted(c.data.params["dropout"] for c in mine) == ["0.1", "0.2"]
        assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in mine)

"""Sweeps on a real one-node SLURM cluster (scripts/slurm-up.sh; .ci/run starts it) through
`hydra/launcher=slurm`: the happy path, an array that cannot start, a cancelled job, a
preempted and a requeued job that continue their own runs, and Ctrl-C of the sweep.

Jobs run on this machine, so the sweep's folder and MLflow store are shared by construction.
Each test waits on events (a job's checkpoint, a logged metric, SLURM's queue), never on time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from conftest import EVAL_CACHE, QUICK, all_runs, artifact_paths, ctrl_c_as_in_a_terminal, run_cli, store_client
from ganlab.sweeps.slurm import ACTIVE_STATES


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "SLURM is not installed here (scripts/slurm-up.sh installs and starts a one-node cluster, as root)"
    state = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True)
    if state.returncode != 0 or not re.match(r"(idle|mixed|allocated)", state.stdout.strip()):
        return (f"the SLURM cluster is not up (sinfo: {(state.stdout + state.stderr).strip() or 'no node'}); "
                "scripts/slurm-up.sh starts it")
    return None


PROBLEM = _cluster_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))

# One CPU per job, so the two jobs of a sweep run at once on a two-core node.
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]
QUICKER = [item for item in QUICK if not item.startswith(("epochs=", "steps_per_epoch="))]  # each test sets both
TINY = [*QUICKER, "steps_per_epoch=3"]
TQDM_MARKS = ("\r", "it/s]", "█")


def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m ganlab.train args` in the background, as conftest.run_cli runs it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GANLAB_CACHE_DIR": str(EVAL_CACHE)}
    return subprocess.Popen([sys.executable, "-m", "ganlab.train", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_as_in_a_terminal)


def wait_for(condition, what: str, process: subprocess.Popen | None = None, limit_s: float = 300):
    """Polls `condition()` until it is truthy; fails if the sweep ends first or nothing comes in `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the sweep ended (exit {process.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {what} within {limit_s} s")


def sweep_dir(cwd: Path) -> Path | None:
    found = sorted(cwd.glob("outputs/multirun/*/ganlab_sweep.json"))
    return found[0].parent if found else None


def slurm_job_id(cwd: Path, job_num: int) -> str | None:
    """The SLURM id (`<array>_<task>`) of sweep job `job_num`, from submitit's folders."""
    folder = sweep_dir(cwd)
    found = [path.name for path in folder.glob(f".submitit/*_{job_num}") if path.is_dir()] if folder else []
    return found[0] if found else None


def checkpointed(cwd: Path, job_num: int) -> bool:
    folder = sweep_dir(cwd)
    return bool(folder and (folder / str(job_num) / "checkpoint" / "checkpoint.npz").is_file())


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    arrays = ",".join(sorted({job_id.split("_")[0] for job_id in job_ids}))
    done = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--jobs={arrays}"],
                          capture_output=True, text=True)
    return dict(line.split("|") for line in done.stdout.split())


def parent_and_children(cwd: Path):
    runs = all_runs(cwd)
    parents = [run for run in runs if run.data.tags.get("sweep.parent") == "true"]
    assert len(parents) == 1
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], sorted(children, key=lambda run: int(run.data.tags["sweep.job_num"]))


def logged_epochs(cwd: Path, job_num: int, metric: str = "d_loss") -> list[int]:
    _, children = parent_and_children(cwd)
    run = next(child for child in children if child.data.tags["sweep.job_num"] == str(job_num))
    return sorted(point.step for point in store_client(cwd).get_metric_history(run.info.run_id, metric))


def job_run_with_epoch(cwd: Path, job_num: int, epoch: int) -> bool:
    """True once sweep job `job_num` logged `d_loss` for `epoch` (its checkpoint of that epoch is written)."""
    if not checkpointed(cwd, job_num):  # before it, the store may still be being created
        return False
    try:
        return epoch in logged_epochs(cwd, job_num)
    except (StopIteration, AssertionError, MlflowException):  # its run not yet there, or the store busy
        return False


def test_a_sweep_runs_as_a_job_array(workdir):
    result = run_cli([*SLURM, "dropout=0.1,0.3", *TINY, "epochs=2"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FINISHED"
    assert [child.info.status for child in children] == ["FINISHED", "FINISHED"]
    assert sorted(child.data.params["dropout"] for child in children) == ["0.1", "0.3"]
    assert "summary/sweep_summary.csv" in artifact_paths(store_client(workdir), parent.info.run_id)
    logs = list(sweep_dir(workdir).glob(".submitit/*_*/*_log.*"))
    assert len(logs) == 4  # stdout and stderr of both jobs, which really ran under SLURM
    text = "".join(log.read_text() for log in logs)
    assert "epoch 2/2" in text  # the one-line-per-epoch console ...
    assert not any(mark in text for mark in TQDM_MARKS)  # ... and no progress bars
    assert "Bypassing sacct" not in result.stdout + result.stderr


@pytest.mark.parametrize("ask, said", [
    ("hydra.launcher.cpus_per_task=64", "pending (PartitionConfig)"),
    ("hydra.launcher.mem_gb=100000", "SLURM refused the sweep's jobs"),
])
def test_an_array_that_cannot_start_is_cancelled_with_a_message(workdir, ask, said):
    result = run_cli([*SLURM, ask, "dropout=0.1,0.3", *TINY], workdir)
    assert result.returncode == 1
    assert said in result.stderr
    assert "hydra.launcher.cpus_per_task" in result.stderr and "hydra.launcher.mem_gb" in result.stderr
    assert re.search(r"have \S+: \d+ CPUs, [\d.]+ GB", result.stderr)  # what the node has
    assert "Traceback" not in result.stderr
    job = slurm_job_id(workdir, 0)
    if job is not None:  # submitted, then cancelled: nothing is left waiting in the queue
        assert slurm_states([job]).get(job, "gone") not in ACTIVE_STATES
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FAILED" and children == []


def test_a_cancelled_job_is_reported_and_the_sweep_ends(workdir):
    # Job 1 trains long enough to be cancelled while it runs; job 0 finishes.
    sweep = start_sweep([*SLURM, "epochs=2,500", *TINY], workdir)
    wait_for(lambda: checkpointed(workdir, 1), "checkpoint of job 1", sweep)
    job = slurm_job_id(workdir, 1)
    subprocess.run(["scancel", job], check=True)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err[-3000:]
    lost = [line for line in err.splitlines() if f"SLURM job {job}" in line]
    assert lost == [f"ganlab: sweep job 1 (epochs=500) did not finish: SLURM job {job} ended CANCELLED"], err[-3000:]
    assert "1 of 2 sweep jobs did not finish" in err
    assert "Traceback" not in out + err and "Bypassing sacct" not in out + err
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FAILED"
    assert [child.info.status for child in children] == ["FINISHED", "KILLED"]
    assert "summary/sweep_summary.csv" in artifact_paths(store_client(workdir), parent.info.run_id)


def test_a_preempted_and_a_requeued_job_continue_their_own_runs(workdir):
    # Epochs long enough (steps) that the signal lands while training goes on.
    epochs = 3
    sweep = start_sweep([*SLURM, "dropout=0.1,0.3", *QUICKER, "steps_per_epoch=80", f"epochs={epochs}"], workdir)
    for job_num in (0, 1):
        wait_for(lambda: job_run_with_epoch(workdir, job_num, 1), f"epoch 1 of job {job_num}", sweep)
    preempted, requeued = slurm_job_id(workdir, 0), slurm_job_id(workdir, 1)
    subprocess.run(["scancel", "--signal=USR2", preempted], check=True)  # submitit's preemption signal
    subprocess.run(["scontrol", "requeue", requeued], check=True)  # SLURM's own requeue: SIGTERM, then again
    for job in (preempted, requeued):
        # SLURM holds a requeued job back for two minutes (Reason=BeginTime); let it start now.
        wait_for(lambda: slurm_states([job]).get(job) == "PENDING", f"{job} requeued", sweep)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    out, err = sweep.communicate(timeout=400)
    assert sweep.returncode == 0, err[-3000:]
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FINISHED", out[-3000:] + err[-3000:]
    assert len(children) == 2  # one run per job, each continued
    for child in children:
        assert child.info.status == "FINISHED"
        assert int(child.data.tags["resumed_from_epoch"]) >= 1
        assert logged_epochs(workdir, int(child.data.tags["sweep.job_num"])) == list(range(1, epochs + 1))
    log = (sweep_dir(workdir) / ".submitit" / preempted / f"{preempted}_0_log.out").read_text()
    assert f"Requeued job {preempted}" in log  # submitit handled USR2 as a preemption


def test_ctrl_c_of_the_sweep_cancels_its_jobs_and_sweep_resume_finishes_them(workdir):
    # 60 epochs take far longer than the Ctrl-C below needs to arrive; eval once, at the end.
    args = [*SLURM, "dropout=0.1,0.3", *TINY, "epochs=60", "eval.every=60"]
    sweep = start_sweep(args, workdir)
    for job_num in (0, 1):
        wait_for(lambda: checkpointed(workdir, job_num), f"checkpoint of job {job_num}", sweep)
    jobs = [slurm_job_id(workdir, 0), slurm_job_id(workdir, 1)]
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=200)
    assert sweep.returncode == 130, err[-3000:]
    assert f"cancelled its 2 unfinished SLURM job(s) {', '.join(jobs)}" in err
    assert "Traceback" not in out + err
    assert not ACTIVE_STATES & set(slurm_states(jobs).values())
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "KILLED"
    assert [child.info.status for child in children] == ["KILLED", "KILLED"]

    again = run_cli([*args, f"sweep.resume={parent.info.run_id}"], workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FINISHED"
    assert [child.info.status for child in children] == ["FINISHED", "FINISHED"]  # the same two runs, continued
    assert all("resumed_from_epoch" in child.data.tags for child in children)  # from the checkpoint each had
    for job_num in (0, 1):
        assert logged_epochs(workdir, job_num) == list(range(1, 61))

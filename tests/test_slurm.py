"""Sweeps on a real one-node SLURM cluster (scripts/slurm-up.sh; .ci/run starts it) through
`hydra/launcher=slurm`: the happy path, an array that cannot start, a cancelled job, a
preempted and a requeued job that continue their own runs, a drained node, a restarted
controller and a failed node that are waited for, and Ctrl-C of the sweep, with a job SLURM
has to SIGKILL. The rules that read SLURM's answers (`ganlab.sweeps.slurm_wait`) are tested
directly first; they need no cluster.

Jobs run on this machine, so the sweep's folder and MLflow store are shared by construction.
Each test waits on events (a job's checkpoint, a logged metric, SLURM's queue), never on time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import (QUICK, SLURM_GROUP, all_runs, artifact_paths, checkpoint_folder, ctrl_c_as_in_a_terminal,
                      hold_after_checkpoint, new_store, run_cli, start_cli, store_client, thaw_once_signalled)
from ganlab.sweeps import slurm_wait
from ganlab.sweeps.slurm import ACTIVE_STATES
from ganlab.tracking.job_run import FAILURE_TAG
from ganlab.training import checkpoint


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "SLURM is not installed here (scripts/slurm-up.sh installs and starts a one-node cluster, as root)"
    state = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True)
    if state.returncode != 0 or not re.match(r"(idle|mixed|allocated)", state.stdout.strip()):
        return (f"the SLURM cluster is not up (sinfo: {(state.stdout + state.stderr).strip() or 'no node'}); "
                "scripts/slurm-up.sh starts it")
    return None


PROBLEM = _cluster_problem()


CLUSTER_TESTS: set[str] = set()  # the names of the tests marked @cluster


def cluster(test):
    """A test on the one-node cluster: skipped where it is not up, and never at the same time as another
    (all run on one xdist worker, one after another)."""
    CLUSTER_TESTS.add(test.__name__)
    return pytest.mark.xdist_group(SLURM_GROUP)(pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))(test))

# One CPU per job, so the two jobs of a sweep run at once on a two-core node; a job without a
# result is lost after 10 s of SLURM saying it ended (120 s by default).
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
         "hydra.launcher.lost_after_s=10"]
QUICKER = [item for item in QUICK if not item.startswith(("epochs=", "steps_per_epoch="))]  # each test sets both
TINY = [*QUICKER, "steps_per_epoch=3"]
TQDM_MARKS = ("\r", "it/s]", "█")


def start_sweep(args: list[str], cwd: Path, stderr_file: Path | None = None) -> subprocess.Popen:
    """`python -m ganlab.train args` in the background, as conftest.run_cli runs it; its stderr
    in `stderr_file` (to be read while it runs) if given."""
    stderr = stderr_file.open("w") if stderr_file else subprocess.PIPE
    return start_cli(args, cwd, stderr=stderr, preexec_fn=ctrl_c_as_in_a_terminal)


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
    folder = checkpoint_folder(cwd, job_num)
    return bool(folder and (folder / checkpoint.FILE).is_file())


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


def lines_with(text: str, file: Path) -> list[str]:
    return [line for line in file.read_text().splitlines() if text in line] if file.exists() else []


def node_name() -> str:
    return subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N"], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True)


def controller_pid() -> int | None:
    pid_file = Path("/run/slurmctld.pid")
    pid = int(pid_file.read_text()) if pid_file.is_file() else None
    return pid if pid is not None and psutil.pid_exists(pid) else None


@pytest.fixture
def cluster_restored():
    """However a test that stops the controller or takes the node out ends, both are back after it."""
    yield
    if controller_pid() is None:
        subprocess.run(["slurmctld"], check=True)
        wait_for(lambda: subprocess.run(["sinfo"], capture_output=True).returncode == 0, "slurmctld answering",
                 limit_s=60)
    state = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True).stdout
    if re.match(r"(drain|down)", state.strip()):
        scontrol("update", f"nodename={node_name()}", "state=resume")


def hold_signals(pid: int) -> None:
    """Stops the main thread of process `pid` under ptrace (as a debugger would) until the process
    dies: the signals SLURM sends a cancelled job (SIGCONT, SIGTERM) then never reach its Python
    handlers, so it cannot close its run, and SLURM SIGKILLs it after KillWait, like a job hung on a
    dead disk. A thread does it: the tracer must also collect the process's end."""
    attached, problem = threading.Event(), []

    def trace():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.ptrace(ctypes.c_long(16), ctypes.c_int(pid), None, None) != 0:  # PTRACE_ATTACH
            problem.append(os.strerror(ctypes.get_errno()))
        attached.set()
        while not problem:
            try:
                _, status = os.waitpid(pid, 0x40000000)  # __WALL: a traced process that is not our child
            except ChildProcessError:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return

    threading.Thread(target=trace, daemon=True).start()
    attached.wait(30)
    assert not problem, f"ptrace of the job's process refused: {problem}"


# The rules that read SLURM's answers, on answers as SLURM gives them.

NODE = {"name": "vm", "cpus": 2, "mem_mb": 24105.0, "reason": ""}
ONE_CPU = {"cpus_per_task": 1, "mem_gb": 2}


def test_a_job_is_lost_only_once_squeue_and_sacct_agree_for_lost_after_s():
    watch = slurm_wait.LostWatch(lost_after_s=120)
    assert not watch.observe("7_0", "COMPLETED", None, now=0)  # ended: its result file may come late
    assert not watch.observe("7_0", None, None, now=119)  # forgotten by squeue, still within the wait
    assert watch.observe("7_0", None, None, now=120)
    # NODE_FAIL, then SLURM requeues it: the count starts again from the next end.
    assert not watch.observe("7_1", "NODE_FAIL", None, now=0)
    assert not watch.observe("7_1", "PENDING", None, now=100)
    assert not watch.observe("7_1", "NODE_FAIL", None, now=130)
    assert watch.next_verdict(["7_0", "7_1"]) == 250
    assert not watch.observe("7_1", "NODE_FAIL", None, now=249) and watch.observe("7_1", "NODE_FAIL", None, now=250)
    # Accounting that says the job runs (squeue forgot it across a controller restart) is believed.
    assert not watch.observe("7_2", None, "RUNNING", now=0) and not watch.observe("7_2", None, "RUNNING", now=500)
    assert not watch.observe("7_2", None, "CANCELLED", now=501) and watch.observe("7_2", None, "CANCELLED", now=621)


def test_a_lost_jobs_run_that_closed_itself_first_also_names_what_slurm_did(tmp_path):
    """SLURM's SIGTERM may let the job close its own run before the launcher sees CANCELLED (or after it
    closed the run): at the sweep's end the run names both, whichever came first."""
    import json

    from ganlab.sweeps import sweep
    from ganlab.tracking import store as tracking

    client, experiment_id = tracking.open_store(new_store(tmp_path / "mlflow.db"), "ganlab")
    runs = {}
    for job_num, own in (("0", "interrupted (Ctrl-C or SIGTERM)"), ("1", "SLURM job 9_1 ended CANCELLED"), ("2", None)):
        run = client.create_run(experiment_id, tags={tracking.JOB_NUM_TAG: job_num, **({FAILURE_TAG: own} if own else {})})
        client.set_terminated(run.info.run_id, "KILLED")
        runs[job_num] = run.info.run_id
    (tmp_path / sweep.LOST_JOBS_FILE).write_text(json.dumps({num: f"SLURM job 9_{num} ended CANCELLED" for num in runs}))
    children = [client.get_run(run_id) for run_id in runs.values()]
    assert sweep.name_what_the_launcher_saw(client, tmp_path, children)
    reasons = [client.get_run(run_id).data.tags[FAILURE_TAG] for run_id in runs.values()]
    assert reasons == ["interrupted (Ctrl-C or SIGTERM) (SLURM job 9_0 ended CANCELLED)",
                       "SLURM job 9_1 ended CANCELLED", "SLURM job 9_2 ended CANCELLED"]
    assert not sweep.name_what_the_launcher_saw(client, tmp_path, [client.get_run(run_id) for run_id in runs.values()])


def test_only_a_request_beyond_every_nodes_configuration_never_starts():
    drained, unknown = {**NODE, "state": "drained", "reason": "test"}, {**NODE, "state": "unknown"}
    for nodes in ([drained], [unknown], [{**NODE, "state": "completing"}], [{**NODE, "state": "down*"}]):
        assert not slurm_wait.never_fits(nodes, ONE_CPU)  # a node that is not taking jobs now is waited for
    assert slurm_wait.never_fits([drained], {"cpus_per_task": 64, "mem_gb": 2})
    assert slurm_wait.never_fits([{**NODE, "state": "idle"}], {"cpus_per_task": 1, "mem_gb": 100})
    for unknown_nodes in (None, []):  # sinfo gave no answer, or no node: no verdict
        assert not slurm_wait.never_fits(unknown_nodes, {"cpus_per_task": 64})
    # What pending jobs wait for: said only when every node that could run them takes no job.
    assert slurm_wait.node_wait([drained], ONE_CPU) == "node vm is drained (reason: test)"
    draining = {**NODE, "state": "draining", "reason": "test"}  # its running jobs go on
    assert slurm_wait.node_wait([draining], ONE_CPU) == "node vm is drained (reason: test)"
    assert "unknown to the controller" in slurm_wait.node_wait([unknown], ONE_CPU)
    assert slurm_wait.node_wait([drained, {**NODE, "name": "vm2", "state": "mixed"}], ONE_CPU) is None
    assert slurm_wait.node_wait([{**NODE, "state": "completing"}], ONE_CPU) is None


def test_a_wait_is_said_once_per_episode():
    said = []
    notices = slurm_wait.Notices(said.append)
    for line in ("controller down", "controller down", None, "controller down", "controller down"):
        notices.track("controller", line)
    assert said == ["controller down", "controller down"]


@pytest.mark.parametrize("value", [-1, "soon", True])
def test_lost_after_s_must_be_seconds(value):
    with pytest.raises(ValueError, match=r"hydra\.launcher\.lost_after_s=.*a number >= 0"):
        slurm_wait.check_lost_after(value)
    assert slurm_wait.check_lost_after(0) == 0.0


def test_the_cluster_tests_are_one_xdist_group_and_the_shared_sweep_another(request):
    """What keeps two cluster tests from running at once on parallel workers, and the shared sweep from
    running once per worker: each is one xdist group (conftest), and on a worker xdist took the group up."""
    on_worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    cluster_tests = [item for item in request.session.items if item.name.split("[")[0] in CLUSTER_TESTS]
    if not cluster_tests:
        pytest.skip("it checks the cluster tests collected with it (run test_slurm.py whole)")
    for item in request.session.items:
        groups = {str(mark.args[0]) for mark in item.iter_markers("xdist_group")}
        for group, member in ((SLURM_GROUP, item in cluster_tests), ("dropout_sweep", "dropout_sweep" in item.fixturenames)):
            if member:
                assert groups == {group} and (not on_worker or item.nodeid.endswith(f"@{group}")), item.nodeid


@cluster
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


@cluster
def test_a_cancelled_job_is_reported_and_the_sweep_ends(workdir):
    # Job 1 trains long enough to be cancelled while it runs; job 0 finishes.
    sweep = start_sweep([*SLURM, "epochs=2,500", *TINY], workdir)
    wait_for(lambda: checkpointed(workdir, 1), "checkpoint of job 1", sweep)
    job = slurm_job_id(workdir, 1)
    subprocess.run(["scancel", job], check=True)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err[-3000:]
    said = [line for line in err.splitlines() if f"SLURM job {job}" in line]
    # once as it happens (the launcher), once in the sweep's closing list, from the run's recorded reason
    assert said[0] == f"ganlab: sweep job 1 (epochs=500) did not finish: SLURM job {job} ended CANCELLED", err[-3000:]
    assert len(said) == 2 and said[1].startswith("1 of 2 sweep jobs did not finish: job 1 (epochs=500 "), err[-3000:]
    assert f"SLURM job {job} ended CANCELLED" in said[1], err[-3000:]  # beside the job's own reason, if it closed first
    assert "Traceback" not in out + err and "Bypassing sacct" not in out + err
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FAILED"
    assert [child.info.status for child in children] == ["FINISHED", "KILLED"]
    assert "summary/sweep_summary.csv" in artifact_paths(store_client(workdir), parent.info.run_id)


@pytest.mark.heavy
@cluster
def test_a_preempted_and_a_requeued_job_continue_their_own_runs(workdir):
    # Both jobs held still (SIGSTOP) after their first epoch until the signal is there: it lands mid-training.
    epochs = 3
    sweep = start_sweep([*SLURM, "dropout=0.1,0.3", *QUICKER, "steps_per_epoch=20", f"epochs={epochs}"], workdir)
    held = hold_after_checkpoint(workdir, sweep, [0, 1])
    preempted, requeued = slurm_job_id(workdir, 0), slurm_job_id(workdir, 1)
    subprocess.run(["scancel", "--signal=USR2", preempted], check=True)  # submitit's preemption signal
    subprocess.run(["scontrol", "requeue", requeued], check=True)  # SLURM's own requeue: SIGTERM, then again
    thaw_once_signalled([held[0]], signal.SIGUSR2)
    thaw_once_signalled([held[1]], signal.SIGTERM)
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
    assert f"Requeued job {preempted}" in log, log[-3000:]  # submitit handled USR2 as a preemption, uncut


@pytest.mark.heavy
@cluster
def test_a_drained_node_a_restarted_controller_and_a_failed_node_are_waited_for(workdir, cluster_restored):
    node, err_file = node_name(), workdir / "sweep.err"
    # Two CPUs a job: job 0 runs while job 1 waits for it (Resources); job 0 is held still (SIGSTOP) after its
    # first epoch, so it is still running whatever follows takes, until its node fails under it.
    epochs = 3
    sweep = start_sweep([*SLURM, "hydra.launcher.cpus_per_task=2", f"epochs={epochs},1", *QUICKER, "steps_per_epoch=20"],
                        workdir, err_file)
    held = hold_after_checkpoint(workdir, sweep, [0])[0]
    try:
        drain_restart_and_fail(node, slurm_job_id(workdir, 0), err_file, sweep)
    finally:
        with contextlib.suppress(psutil.Error):
            held.resume()  # a no-op once its node's failure has ended it
    sweep.wait(timeout=600)
    err = err_file.read_text()
    assert sweep.returncode == 0, err[-3000:]
    drained = f"ganlab: waiting: node {node} is drained (reason: ganlab test)"
    unreachable = "ganlab: waiting for SLURM's controller, which does not answer"
    assert len(lines_with(drained, err_file)) == 1 and len(lines_with(unreachable, err_file)) == 1, err[-3000:]
    assert not re.search(r"cancel|did not finish|Traceback", err), err[-3000:]
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FINISHED"
    assert [child.info.status for child in children] == ["FINISHED", "FINISHED"]
    assert int(children[0].data.tags["resumed_from_epoch"]) >= 1  # job 0 continued its own run
    assert logged_epochs(workdir, 0) == list(range(1, epochs + 1))


def drain_restart_and_fail(node: str, job: str, err_file: Path, sweep: subprocess.Popen) -> None:
    """While SLURM job `job` runs: drain its node, restart the controller, then fail the node (SLURM
    requeues the job) and bring it back; each wait is said once on the sweep's stderr (`err_file`)."""
    scontrol("update", f"nodename={node}", "state=drain", "reason=ganlab test")  # job 0 goes on, job 1 may not start
    drained = f"ganlab: waiting: node {node} is drained (reason: ganlab test)"
    wait_for(lambda: lines_with(drained, err_file), "the line saying the sweep waits for the drained node", sweep)
    os.kill(controller_pid(), signal.SIGTERM)  # a controller restart: down, then up again
    unreachable = "ganlab: waiting for SLURM's controller, which does not answer"
    wait_for(lambda: lines_with(unreachable, err_file), "the line saying the sweep waits for slurmctld", sweep)
    wait_for(lambda: controller_pid() is None, "slurmctld stopped")
    subprocess.run(["slurmctld"], check=True)
    wait_for(lambda: subprocess.run(["sinfo"], capture_output=True).returncode == 0, "slurmctld answering", sweep)
    assert slurm_states([job]).get(job) == "RUNNING", "job 0 ended before its node could fail under it"
    scontrol("update", f"nodename={node}", "state=down", "reason=ganlab test")  # NODE_FAIL: SLURM requeues job 0
    wait_for(lambda: slurm_states([job]).get(job) == "PENDING", f"{job} requeued", sweep)
    scontrol("update", f"nodename={node}", "state=resume")
    scontrol("update", f"JobId={job}", "StartTime=now")  # not the two minutes SLURM holds a requeued job back


@pytest.mark.heavy
@cluster
def test_ctrl_c_of_the_sweep_cancels_its_jobs_and_sweep_resume_finishes_them(workdir):
    # Each job is held after its first epoch, so neither can finish before the Ctrl-C; eval once, at the end.
    epochs = 8
    args = [*SLURM, "dropout=0.1,0.3", *TINY, f"epochs={epochs}", f"eval.every={epochs}"]
    sweep = start_sweep(args, workdir)
    # After its first epoch, job 0 is held with SIGSTOP (the SIGCONT SLURM sends before its SIGTERM lets it go
    # on); job 1 hangs as on a dead disk: SLURM's SIGTERM never reaches it, SLURM SIGKILLs it after KillWait.
    hold_after_checkpoint(workdir, sweep, [0, 1], then={1: lambda process: hold_signals(process.pid)})
    jobs = [slurm_job_id(workdir, 0), slurm_job_id(workdir, 1)]
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=200)
    assert sweep.returncode == 130, err[-3000:]
    assert f"cancelled its 2 unfinished SLURM job(s) {', '.join(jobs)}" in err
    closed_line = re.search(r"ganlab: closed KILLED the run\(s\) of sweep job\(s\) ([\d, ]+): SLURM killed them "
                            r"before they could close", err)
    assert closed_line, err[-3000:]
    # job 1 never sees SIGTERM; job 0 closes its own run unless a loaded machine keeps it past KillWait (30 s)
    closed_by_sweep = closed_line.group(1).split(", ")
    assert "1" in closed_by_sweep and set(closed_by_sweep) <= {"0", "1"}, closed_line.group(0)
    assert "Traceback" not in out + err
    assert not ACTIVE_STATES & set(slurm_states(jobs).values())
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "KILLED"
    assert [child.info.status for child in children] == ["KILLED", "KILLED"]
    assert "killed before it could close its run" in children[1].data.tags[FAILURE_TAG]  # closed by the sweep
    assert ("killed before" in children[0].data.tags[FAILURE_TAG]) == ("0" in closed_by_sweep)  # else by itself

    again = run_cli([*args, f"sweep.resume={parent.info.run_id}"], workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FINISHED"
    assert [child.info.status for child in children] == ["FINISHED", "FINISHED"]  # the same two runs, continued
    assert all("resumed_from_epoch" in child.data.tags for child in children)  # from the checkpoint each had
    for job_num in (0, 1):
        assert logged_epochs(workdir, job_num) == list(range(1, epochs + 1))

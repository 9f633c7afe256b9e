"""Shared test helpers: where real MNIST is, running the real CLI, reading the MLflow store, the
4-job sweep that every test reading a sweep's results shares, a tracking server that hangs or fails,
and how the suite is shared out between pytest-xdist's workers (the end of this file)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
FIXTURE_MNIST = REPO / "tests" / "fixtures" / "mnist_small.npz"  # 2,000 + 2,000 real MNIST images
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist.npz"
SHIPPED_MNIST = REPO / "ganlab" / "datasets" / "mnist.npz"  # the same arrays, shipped with the package
# The full set where it is beside the repo (as in CI), else the copy shipped with ganlab.
MNIST_FILE = SHARED_MNIST if SHARED_MNIST.exists() else SHIPPED_MNIST

# The real test-set statistics are computed once for the whole test session, its parallel workers included:
# the folder is made by the first process to load this file (pytest's main process, before it starts the
# workers, which inherit the variable); the evaluator writes each statistics file atomically.
CACHE_ENV = "GANLAB_TEST_SESSION_CACHE"
if not os.environ.get(CACHE_ENV):
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="ganlab-test-cache-")
EVAL_CACHE = Path(os.environ[CACHE_ENV])

# No MLflow Model logged: about 1.3 CPU-s less a job process. Every test job that does not look at the logged
# generators passes it; the shared sweep and the dcgan job, whose tests do, log them.
NO_MODELS = "tracking.log_models=false"
# Small, fast jobs: a few steps, a small evaluation, on the fixture's real MNIST images (scoring against its
# 2,000 test images and finding nearest neighbours among its 2,000 training ones costs a job about 3 CPU-s
# less than the full set), and NO_MODELS. A test that needs the full set passes data.path=MNIST_FILE after QUICK.
QUICK = ["epochs=1", "steps_per_epoch=5", "eval.num_samples=300", f"data.path={FIXTURE_MNIST}", NO_MODELS]


# `python -m <module> args`, run as Python runs it, then two last stdout lines saying whether scikit-learn
# and TensorFlow were loaded.
TELLS_IF_TENSORFLOW_LOADED = """import runpy, sys
module, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    print("scikit-learn loaded:", sys.modules.get("sklearn") is not None, flush=True)
    print("tensorflow loaded:", "tensorflow" in sys.modules, flush=True)
"""


def cli_env(env: dict | None = None) -> dict:
    """The environment the tests run a CLI in: TensorFlow's C++ log quiet, the session's statistics cache, then `env`."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GANLAB_CACHE_DIR": str(EVAL_CACHE), **(env or {})}


def run_cli(args: list[str], cwd: Path, module: str = "ganlab.train", timeout: int = 600, env: dict | None = None,
            tell_if_tensorflow_loaded: bool = False):
    """Run `python -m <module> args` for real in `cwd`; the store is cwd/mlruns by default. With
    `tell_if_tensorflow_loaded`, stdout ends with "scikit-learn loaded: True|False" and "tensorflow loaded: True|False"."""
    command = ["-c", TELLS_IF_TENSORFLOW_LOADED, module] if tell_if_tensorflow_loaded else ["-m", module]
    return subprocess.run(
        [sys.executable, *command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=cli_env(env)
    )


def start_cli(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    """`python -m ganlab.train args` started in `cwd` as run_cli runs it, left running; its stdout and stderr
    are text pipes unless `popen` (subprocess.Popen's arguments) says otherwise."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([sys.executable, "-m", "ganlab.train", *args], cwd=cwd, env=cli_env(), **options)


def store_is_ready(cwd: Path) -> bool:
    """True once a job under `cwd` wrote its first checkpoint, which comes after its run was
    created: from then on the store's schema is complete and reading it cannot race the
    job's own creation of the database."""
    return bool(list(cwd.glob("outputs/**/checkpoint/checkpoint.npz")))


def store_client(cwd: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")


def all_runs(cwd: Path, experiment_name: str = "ganlab"):
    client = store_client(cwd)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], max_results=1000)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, recursively."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def ctrl_c_as_in_a_terminal() -> None:
    """`preexec_fn` of a CLI a test stops with SIGINT: one started from a background shell inherits
    SIGINT ignored, and then Python never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


BARE_WORKDIR = "bare_workdir"


@functools.cache
def new_store_database() -> Path:
    """The database of a new SQLite store as MLflow leaves it once it has made its tables (every migration
    applied), less the Default experiment, which MLflow makes again when it opens a store without one. Made
    once per process; a copy of it spares a test's store MLflow's migrations, about 1.3 CPU-s."""
    import sqlite3

    path = EVAL_CACHE / f"new-store-{os.getpid()}" / "mlflow.db"  # the session's folder; one per worker
    path.parent.mkdir(exist_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    with contextlib.closing(sqlite3.connect(path)) as database, database:
        database.execute("DELETE FROM experiments")
    return path


def new_store(database: Path) -> str:
    """The URI of a new SQLite store at `database` (its folder made): what a first run there would make."""
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(new_store_database(), database)
    return f"sqlite:///{database}"


@pytest.fixture
def workdir(tmp_path: Path, request) -> Path:
    """A directory to run the CLI in, with its own outputs/ and a new store in mlruns/ (`new_store`). Left
    empty for a test marked `bare_workdir`: one that checks what a command leaves behind, or that several
    processes make a store at once."""
    if request.node.get_closest_marker(BARE_WORKDIR) is None:
        new_store(tmp_path / "mlruns" / "mlflow.db")
    return tmp_path


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` (e.g. "20m") mounted at `folder` for the block (root only): a disk that fills up."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # the test's process may still hold files open


# ---------------------------------------------------------------------------- holding a job still

def job_holding(checkpoint_folder: Path):
    """The process training the job whose checkpoint folder is `checkpoint_folder` (it holds the folder's
    lock file open for its life), or None."""
    import psutil

    from ganlab.training import checkpoint

    lock = str((Path(checkpoint_folder) / checkpoint.LOCK_FILE).resolve())
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "python" in " ".join(process.info["cmdline"] or [])[:200] and any(
                    opened.path == lock for opened in process.open_files()):
                return process
        except psutil.Error:
            continue
    return None


def checkpoint_folder(cwd: Path, job: int) -> Path | None:
    """Job `job`'s checkpoint folder in the sweep run under `cwd`, by any launcher (None before the
    sweep's folder exists)."""
    from ganlab.training import checkpoint

    found = sorted(cwd.glob(f"outputs/multirun/*/{job}"))
    return found[0] / checkpoint.FOLDER if found else None


def holds_a_record_lock(pid: int) -> bool:
    """True if process `pid` holds a POSIX record lock (/proc/locks): SQLite takes one on the MLflow store's file
    for each transaction, so a process stopped holding one stalls every other writer of that store."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "POSIX" and fields[4] == str(pid):  # `1: -> POSIX ...` (a waiter) does not match
            return True
    return False


def hold_after_checkpoint(cwd: Path, running: subprocess.Popen, jobs: list[int], epoch: int = 1,
                          then: dict | None = None) -> dict:
    """Holds the `jobs` of sweep `running` (run under `cwd`) still (SIGSTOP) right after each checkpoints
    epoch `epoch` (0: the untrained checkpoint it writes once its run exists), so none can finish whatever
    the test does next; returns {job: its psutil.Process}.

    Each job's process is found while it starts (the one holding its folder's lock), so its hold follows its
    checkpoint within one poll: a job of a few short epochs cannot slip through. A job caught inside a write
    to the store is let go and caught again at the next poll: held there, it would stall the other jobs' writes.
    `then[job](process)` is done to a held job's process next (e.g. ptrace it). Fails, never hangs, if the
    sweep or an unheld job ends first; on a failure the jobs already held go on."""
    import psutil

    from ganlab.training import checkpoint

    then = then or {}
    found, held = {}, {}
    deadline = time.monotonic() + 600  # only a guard against a hang
    try:
        while len(held) < len(jobs):
            for job in sorted(set(jobs) - set(held)):
                folder = checkpoint_folder(cwd, job)
                if job not in found and folder is not None and (folder / checkpoint.LOCK_FILE).exists():
                    found[job] = job_holding(folder)
                process = found.get(job)
                if process is None:
                    found.pop(job, None)
                elif (folder / checkpoint.FILE).is_file() and checkpoint.find(folder).epoch >= epoch:
                    assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE, (
                        f"job {job} ended before it could be held after epoch {epoch}")
                    process.suspend()
                    if holds_a_record_lock(process.pid):
                        process.resume()
                        continue
                    held[job] = process
                    then.get(job, lambda _: None)(process)
            assert running.poll() is None, f"the sweep ended before its jobs {jobs} were held"
            unheld = sorted(set(jobs) - set(held))
            assert time.monotonic() < deadline, f"jobs {unheld} were never held after epoch {epoch}"
            time.sleep(0.02)
    except BaseException:
        for process in held.values():
            with contextlib.suppress(psutil.Error):
                process.resume()
        raise
    return held


def signal_pending(pid: int, signum: int) -> bool:
    """True if `signum` waits, undelivered, for process `pid` (its /proc status: a stopped process keeps it there)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    pending = 0
    for line in status.splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")):
            pending |= int(line.split()[1], 16)
    return bool(pending & (1 << (signum - 1)))


def thaw_once_signalled(frozen: list, signum: int) -> None:
    """Lets the processes `frozen` (held still with SIGSTOP, psutil's `suspend`) go on once each has
    `signum` waiting or has ended: a stop sent while they were held then reaches each at the
    moment it was held, however much of its work was left."""
    import psutil

    def still_waiting(process) -> bool:
        try:
            return process.status() != psutil.STATUS_ZOMBIE and not signal_pending(process.pid, signum)
        except psutil.Error:  # ended
            return False

    deadline = time.monotonic() + 300  # only a guard against a hang: the stop never sent
    while any(still_waiting(process) for process in frozen):
        assert time.monotonic() < deadline, f"no {signal.Signals(signum).name} reached the held processes"
        time.sleep(0.1)
    for process in frozen:
        with contextlib.suppress(psutil.Error):
            process.resume()


# ---------------------------------------------------------------------------- the shared 4-job sweep

REGISTERED_MODEL = "ganlab-test-generator"
SHARED_EPOCHS = 2
SHARED_SEEDS = ["0", "1"]
# One real sweep through the CLI serves every test that only reads a sweep's results: two settings of
# dropout, two seeds each, in four jobs of two epochs, every epoch scored, with an EMA of G; system metrics
# on, the generators registered; TensorFlow's C++ log level 2 (what a machine with a GPU gets) so its
# console also shows what leaks through at that level. Its jobs, in job order: dropout=0.1 seeds 0 and 1,
# then dropout=0.3 seeds 0 and 1.
SHARED_SWEEP = ["-m", "dropout=0.1,0.3", f"seed={','.join(SHARED_SEEDS)}", "ema=0.99", *QUICK, f"epochs={SHARED_EPOCHS}",
                "eval.every=1", "tracking.log_models=true", f"tracking.register_model={REGISTERED_MODEL}",
                "tracking.system_metrics=true"]
SHARED_SWEEP_ENV = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


class Sweep(NamedTuple):
    cwd: Path  # where it ran: its outputs/ and mlruns/
    result: subprocess.CompletedProcess
    parent: object  # mlflow Run
    children: list  # mlflow Runs, in job order


def sweep_runs(cwd: Path):
    """The one sweep parent run in the store under `cwd` and its children in job order."""
    from ganlab.tracking.store import JOB_NUM_TAG, PARENT_RUN_TAG, SWEEP_PARENT_TAG

    runs = all_runs(cwd)
    parents = [run for run in runs if run.data.tags.get(SWEEP_PARENT_TAG) == "true"]
    assert len(parents) == 1, [run.info.run_name for run in runs]
    children = [run for run in runs if run.data.tags.get(PARENT_RUN_TAG) == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], sorted(children, key=lambda run: int(run.data.tags[JOB_NUM_TAG]))


@pytest.fixture(scope="session")
def dropout_sweep(tmp_path_factory) -> Sweep:
    """The shared `dropout=0.1,0.3 seed=0,1` sweep (SHARED_SWEEP), run once per test session. Read it, never write to
    its store: a test that changes a sweep runs its own."""
    cwd = tmp_path_factory.mktemp("dropout_sweep")
    result = run_cli(SHARED_SWEEP, cwd, env=SHARED_SWEEP_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(cwd)
    assert [child.info.status for child in children] == ["FINISHED"] * 4
    return Sweep(cwd, result, parent, children)


# ---------------------------------------------------------------------------- the shared dcgan job

# An empty TF_CPP_MIN_LOG_LEVEL is an unset one to ganlab: the level a fresh shell gets.
FRESH_SHELL = {"TF_CPP_MIN_LOG_LEVEL": ""}
# The image-shaped model with the loss and optimizer that differ most from the tutorial's, end to end; with an
# EMA of G as the objective at its best epoch (one epoch, so the best is the last).
DCGAN_JOB = ["model=dcgan", "loss=wgan_gp", "optimizer=ttur", *QUICK, "steps_per_epoch=6", "ema=0.5", "objective=ema_fid",
             "objective_at=best", "tracking.log_models=true"]


@pytest.fixture(scope="session")
def dcgan_job(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real DCGAN_JOB through the CLI, its TensorFlow log level left to ganlab (FRESH_SHELL), shared by the
    tests that read its run or its console: (where it ran, the finished process)."""
    cwd = tmp_path_factory.mktemp("dcgan_job")
    result = run_cli(DCGAN_JOB, cwd, env=FRESH_SHELL)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


# ---------------------------------------------------------------------------- a tracking server that hangs or fails


class MlflowStub(http.server.ThreadingHTTPServer):
    """A tracking server whose API hangs (never answers: "hang") or fails with HTTP 500 ("fail").

    /health always answers. With `run_exists`, it first serves just enough of MLflow's REST API for
    a job to create its run (the experiment, its tag, the run), and in "fail" mode marking the run
    (runs/get, runs/update) works and is recorded in `updates`; without it every API call hangs or
    fails from the first. Use it as a context manager: it serves on a free port (`uri`) and releases
    hung requests on exit.
    """

    daemon_threads = True
    RUN = {"info": {"run_id": "stubrun", "run_uuid": "stubrun", "experiment_id": "1", "status": "RUNNING",
                    "start_time": 1, "artifact_uri": "/nonexistent/stubrun", "lifecycle_stage": "active",
                    "run_name": "stub"}, "data": {}}

    def __init__(self, mode: str, run_exists: bool = True):
        assert mode in ("hang", "fail")
        self.mode, self.run_exists, self.release, self.updates = mode, run_exists, threading.Event(), []
        self.hung = []  # the API paths of the requests left hanging, in order
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code: int, body) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                if path == "/health":
                    return self.reply(200, b"OK")
                if stub.run_exists and path.endswith("/experiments/get-by-name"):
                    return self.reply(200, {"experiment": {"experiment_id": "1", "name": "ganlab", "lifecycle_stage": "active",
                                                           "artifact_location": "/nonexistent"}})
                if stub.run_exists and path.endswith("/experiments/set-experiment-tag"):
                    return self.reply(200, {})
                if stub.run_exists and path.endswith("/runs/create"):
                    return self.reply(200, {"run": stub.RUN})
                if stub.mode == "hang":
                    stub.hung.append(path)
                    stub.release.wait(600)  # until the test ends
                    return None
                if stub.run_exists and path.endswith("/runs/get"):
                    return self.reply(200, {"run": stub.RUN})
                if stub.run_exists and path.endswith("/runs/update"):
                    stub.updates.append(json.loads(body or b"{}"))
                    return self.reply(200, {"run_info": stub.RUN["info"]})
                return self.reply(500, {"error_code": "INTERNAL_ERROR", "message": "stub"})

            do_POST = do_GET

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "MlflowStub":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


# ---------------------------------------------------------------------------- the suite on parallel workers (pytest-xdist)

# Marks that say how pyproject.toml's `-n 3 --dist loadgroup` may share the suite out (registered there):
SLURM_GROUP = "slurm"  # the one-node SLURM cluster: its tests never run at the same time on two workers
HEAVY = "heavy"  # a test of about a minute or more (with its fixtures' set-up): handed out first
HEAVY_S, LIGHT_S = 90, 8  # the guesses at a test's seconds that order the hand-out, longest first


def _shared_groups(item: pytest.Item) -> list[tuple[int, str]]:
    """The groups `item` must share a worker with, as (rank, name): its own xdist_group marks (rank 0), then
    conftest's session fixtures it uses (rank 1, by the fixture's name) and its module's own module-scoped
    fixtures (rank 2, by the module's name), directly or through other fixtures."""
    groups = [(0, str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")))
              for mark in item.iter_markers("xdist_group")]
    if isinstance(item, pytest.Function):
        for name in item.fixturenames:
            definitions = item._fixtureinfo.name2fixturedefs.get(name)  # pytest's own view of the fixture
            if not definitions or not definitions[-1].baseid:  # a parameter, or one of pytest's own (tmp_path_factory)
                continue
            definition = definitions[-1]
            if definition.scope == "session":
                groups.append((1, name))
            elif definition.scope in ("package", "module"):
                groups.append((2, Path(definition.baseid.split("::")[0]).stem))
    return groups


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks (xdist.remote)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that shares a module- or session-scoped fixture with another goes to one xdist group with
    it (groups that share a test merge), so each such fixture is set up once, on one worker: a
    worker would otherwise set it up again for every stretch of its tests it is handed. On a worker, the
    tests are then ordered longest group first (HEAVY tests counted long), so no long test waits for the end."""
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def root(group):
        while parent.setdefault(group, group) != group:
            group = parent[group]
        return group

    found = {item.nodeid: _shared_groups(item) for item in items}
    for groups in found.values():
        for group in groups[1:]:
            first, other = root(groups[0]), root(group)
            parent[max(first, other)] = min(first, other)  # the lowest rank names the merged group
    for item in items:
        groups = found[item.nodeid]
        if not groups:
            continue
        named = {name for rank, name in groups if rank == 0}
        merged = root(groups[0])[1]
        if named - {merged}:
            raise pytest.UsageError(f"{item.nodeid}: its xdist_group marks {sorted(named)} and the tests it shares "
                                    f"fixtures with (group {merged!r}) must be one group: mark it {merged!r}")
        if not named:
            item.add_marker(pytest.mark.xdist_group(merged))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # xdist hands tests out in this order (--no-loadscope-reorder)
        units: dict[str, list[pytest.Item]] = {}
        for item in items:
            groups = found[item.nodeid]
            units.setdefault(root(groups[0])[1] if groups else item.nodeid, []).append(item)
        guess = {unit: sum(HEAVY_S if item.get_closest_marker(HEAVY) else LIGHT_S for item in tests)
                 for unit, tests in units.items()}
        order = sorted(units, key=lambda unit: -guess[unit])  # stable: collection order among equals
        items[:] = [item for unit in order for item in units[unit]]


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """On a worker of `--dist loadgroup`, a grouped test xdist did not take up (it says nothing: with pytest 9.2's
    node ids, pytest-xdist issue 1386) fails instead of running beside the rest of its group."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(f"pytest-xdist ignored this test's xdist_group: with pytest {pytest.__version__} it cannot keep a "
                    "group on one worker; install the test extra's pytest (pip install -e '.[test]') or run in one "
                    "process (-n 0)", pytrace=False)

"""Shared test helpers: where real MNIST is, running the real CLI, reading the MLflow store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
FIXTURE_MNIST = REPO / "tests" / "fixtures" / "mnist_small.npz"  # 2,000 + 2,000 real MNIST images
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist.npz"
SHIPPED_MNIST = REPO / "ganlab" / "datasets" / "mnist.npz"  # the same arrays, shipped with the package
# The full set where it is beside the repo (as in CI), else the copy shipped with ganlab.
MNIST_FILE = SHARED_MNIST if SHARED_MNIST.exists() else SHIPPED_MNIST

# The real test-set statistics are computed once for the whole test session.
EVAL_CACHE = Path(tempfile.mkdtemp(prefix="ganlab-test-cache-"))

# Small, fast jobs: a few steps, a small evaluation.
QUICK = ["epochs=1", "steps_per_epoch=5", "eval.num_samples=300", f"data.path={MNIST_FILE}"]


def run_cli(args: list[str], cwd: Path, module: str = "ganlab.train", timeout: int = 600, env: dict | None = None):
    """Run `python -m <module> args` for real in `cwd`; the store is cwd/mlruns by default."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GANLAB_CACHE_DIR": str(EVAL_CACHE), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def store_is_ready(cwd: Path) -> bool:
    """True once a job under `cwd` wrote its first checkpoint, which comes after its run was
    created: from then on the store's schema is complete and reading it cannot race the
    job's own creation of the database."""
    return bool(list(cwd.glob("outputs/**/checkpoint/checkpoint.npz")))


def store_client(cwd: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")


def all_runs(cwd: Path):
    client = store_client(cwd)
    experiment = client.get_experiment_by_name("ganlab")
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


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory to run the CLI in: its own outputs/ and mlruns/."""
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

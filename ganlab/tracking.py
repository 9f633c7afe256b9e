"""MLflow tracking for ganlab jobs: the store, one run per job, sweep parent runs.

Everything goes through an explicit `MlflowClient` (no global active run), so a failed
job cannot leak its run into the next job of the same process. The default store is a
SQLite database in `mlruns/` of the directory the command runs in, with artifacts in
`mlruns/artifacts/` given as an absolute location, so `mlflow ui` finds them from
anywhere. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import fcntl
import logging
import platform
import subprocess
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from ganlab.errors import InputError

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
PACKAGES = ("tensorflow", "keras", "mlflow", "hydra-core", "numpy")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SERVER_TIMEOUT_S = 10


def default_tracking_uri(root: str | Path | None = None) -> str:
    """The default store: a SQLite database inside mlruns/ of the directory the command runs in."""
    folder = Path(root or Path.cwd()).resolve() / "mlruns"
    return f"sqlite:///{folder / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    return uri or default_tracking_uri()


def open_store(uri: str | None, experiment: str) -> tuple[MlflowClient, str]:
    """Client and experiment id for `experiment` at `uri`, creating both if needed.

    A SQLite store's file, schema and experiment are created under a file lock, so jobs
    and sweeps started at the same moment never race on a migration. A server URI is
    checked first, so a server that does not answer fails fast with a clear message.
    """
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    if not uri.startswith("sqlite:///"):
        return _get_or_create_experiment(MlflowClient(tracking_uri=uri), experiment, None)
    db_file = Path(uri.removeprefix("sqlite:///"))
    try:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db_file.parent / ".ganlab.lock", "a")
    except OSError as error:
        raise InputError(f"tracking.uri: cannot create the store {uri} ({error}); pick a writable folder.") from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        artifact_location = (db_file.parent / "artifacts" / experiment).as_uri()
        return _get_or_create_experiment(MlflowClient(tracking_uri=uri), experiment, artifact_location)


def _get_or_create_experiment(client: MlflowClient, experiment: str, artifact_location: str | None):
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id
    try:
        return client, client.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException:  # another process created it first
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return client, found.experiment_id


def check_server(uri: str) -> None:
    """Raise InputError unless an MLflow server answers at `uri` within SERVER_TIMEOUT_S."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S).raise_for_status()
    except requests.RequestException as error:
        raise InputError(
            f"tracking.uri: no MLflow server answers at {uri} ({type(error).__name__}). Start one "
            f"(mlflow server --host 127.0.0.1 --port 5000 ...) or use tracking.uri=null for the local "
            "SQLite store in mlruns/."
        ) from error


def find_run(uri: str | None, experiment: str, run_id: str):
    """The run `run_id` in the store, or InputError saying where it was looked for."""
    client, _ = open_store(uri, experiment)
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise InputError(f"resume: no MLflow run {run_id!r} in {resolve_uri(uri)}.") from error


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'dropout': 0.3}} -> {'model.dropout': 0.3}; lists stay values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def resolved_config(cfg: DictConfig) -> dict:
    """The job's config with interpolations resolved, without Hydra's own section."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


def environment_tags() -> dict[str, str]:
    """Git commit and dirtiness of the code, and versions of what ran it."""
    tags = {"version.python": platform.python_version(), "version.ganlab": _version("ganlab")}
    for package in PACKAGES:
        tags[f"version.{package}"] = _version(package)
    commit, dirty = _git_state(PROJECT_ROOT)
    tags["git.commit"] = commit
    tags["git.dirty"] = dirty
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


class JobRun:
    """One MLflow run for one training job, closed with the right status whatever happens.

    Use as a context manager: on a normal exit the run ends FINISHED; on an exception it
    ends FAILED (KILLED for Ctrl-C or SIGTERM) with a `failure_reason` tag and an
    `error.txt` artifact, and the exception goes on. Metrics logged before stay.
    """

    def __init__(
        self,
        cfg: DictConfig,
        output_dir: Path,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        log_file: Path | None = None,
        resume_run_id: str | None = None,
    ):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.run_name = run_name
        self.tags = {key: str(value) for key, value in tags.items()}  # a server takes strings only
        if parent_run_id:
            self.tags[PARENT_RUN_TAG] = parent_run_id
        self.log_file = log_file
        self.resume_run_id = resume_run_id
        self.client: MlflowClient | None = None
        self.run_id: str | None = None

    def __enter__(self) -> "JobRun":
        self.client, experiment_id = open_store(self.cfg.tracking.uri, self.cfg.tracking.experiment)
        if self.resume_run_id:  # the same run goes on: params stay as first logged
            self.run_id = self.resume_run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.set_tags({**environment_tags(), **self.tags})
            log.info("MLflow run %s resumed in %s", self.run_id, resolve_uri(self.cfg.tracking.uri))
            return self
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags={**environment_tags(), **self.tags})
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s) in %s", self.run_id, self.run_name, resolve_uri(self.cfg.tracking.uri))
        config = resolved_config(self.cfg)
        self.log_params(flatten(config))
        config_file = self.output_dir / "config.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(config), config_file)
        self.log_artifact(config_file)
        return self

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def logged_steps(self, metric: str) -> set[int]:
        return {point.step for point in self.client.get_metric_history(self.run_id, metric)}

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def __exit__(self, error_type, error, trace) -> bool:
        if self.run_id is None:
            return False
        if error is None:
            status = RunStatus.FINISHED
        else:
            interrupted = isinstance(error, KeyboardInterrupt)
            status = RunStatus.KILLED if interrupted else RunStatus.FAILED
            reason = "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(error).__name__}: {error}"
            log.error("run %s %s: %s", self.run_id, RunStatus.to_string(status), reason)
            error_file = self.output_dir / "error.txt"
            error_file.write_text("".join(traceback.format_exception(error_type, error, trace)))
            self._safely(lambda: self.set_tags({"failure_reason": reason[:5000]}))
            self._safely(lambda: self.log_artifact(error_file))
        if self.log_file is not None and Path(self.log_file).exists():
            for handler in logging.getLogger().handlers:
                handler.flush()
            self._safely(lambda: self.log_artifact(Path(self.log_file)))
        self.client.set_terminated(self.run_id, RunStatus.to_string(status))
        return False

    @staticmethod
    def _safely(action) -> None:
        # While closing a failed run, a second error must not hide the first one.
        try:
            action()
        except Exception as error:  # noqa: BLE001
            log.warning("could not record on the failed run: %s", error)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_state(folder: Path) -> tuple[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def run_name_from_overrides(overrides: Iterable[str]) -> str:
    """A readable run name from the job's overrides, leaving out paths and tracking keys."""
    shown = [item for item in overrides if not item.split("=")[0].lstrip("+~").startswith(("data.path", "tracking."))]
    return ",".join(shown) or "default"

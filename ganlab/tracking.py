"""The one way into MLflow: open a store, find a run, list a sweep's children, run a job's run.

Everything goes through an explicit `MlflowClient` (no global active run), so a failed
job cannot leak its run into the next job of the same process. Writers open a store
with `open_store` (creating the SQLite file, schema and experiment under a file lock);
readers use `open_reader`, which never creates anything. The default store is a SQLite
database in `mlruns/` of the directory the command runs in, with artifacts in
`mlruns/artifacts/<experiment>/` given as an absolute location, so `mlflow ui` finds
them from anywhere. Calls to a tracking server are bounded in time (see
`bound_server_waits`). What the UI shows beside metrics also comes through `JobRun`:
images per step, the training data as the run's dataset input, the generator as an MLflow
Model, and MLflow's system metrics. Nothing here imports TensorFlow until a model is logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import io
import json
import logging
import os
import platform
import subprocess
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ganlab.errors import InputError

log = logging.getLogger(__name__)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow sets INFO when imported: no schema-migration chatter

PARENT_RUN_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # a run's description, rendered as Markdown by the UI
SWEEP_PARENT_TAG = "sweep.parent"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the UI's badge beside a run's dataset
DIGEST_LENGTH = 12  # a dataset digest as the UI shows it, like a short git hash (MLflow stores at most 36)
PACKAGES = ("tensorflow", "keras", "mlflow", "hydra-core", "numpy", "scipy")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SERVER_TIMEOUT_S = 10
# Bounded waits on a tracking server (each can be overridden in the environment): a
# request gives up after 10 s and is retried once, so a server whose API hangs fails a
# job within about half a minute instead of MLflow's default of many minutes.
SERVER_WAIT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no download bars in the console
}


def bound_server_waits() -> None:
    for name, value in SERVER_WAIT_DEFAULTS.items():
        os.environ.setdefault(name, value)


bound_server_waits()


def default_tracking_uri(root: str | Path | None = None) -> str:
    """The default store: a SQLite database inside mlruns/ of the directory the command runs in."""
    folder = Path(root or Path.cwd()).resolve() / "mlruns"
    return f"sqlite:///{folder / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    return uri or default_tracking_uri()


def ui_hint(uri: str | None, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """Two lines: the `mlflow ui` command for this store and the URL of the run (or experiment)."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        base, command = uri.rstrip("/"), None
    else:
        base, command = "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {uri} --port 5000"
    url = f"{base}/#/experiments/{experiment_id}" if experiment_id else base
    if experiment_id and run_id:
        url += f"/runs/{run_id}"
    if experiment_id:
        # MLflow 3's UI shows an experiment as GenAI (traces) unless the URL or the browser's
        # last choice in the sidebar says machine learning; an experiment tag does not decide it.
        url += "?workflowType=machine_learning"
    lines = ([f"look at it: {command}"] if command else []) + [f"then open {url}"]
    return "\n".join(lines)


def open_store(uri: str | None, experiment: str) -> tuple[MlflowClient, str]:
    """Client and experiment id for `experiment` at `uri`, creating both if needed (for writers).

    A SQLite store's file, schema and experiment are created under a file lock, so jobs
    and sweeps started at the same moment never race on a migration. A server URI is
    checked first, so a server that does not answer fails fast with a clear message.
    """
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    if not uri.startswith("sqlite:///"):
        return _store_call(uri, lambda: _get_or_create_experiment(MlflowClient(tracking_uri=uri), experiment, None))
    db_file = Path(uri.removeprefix("sqlite:///"))
    try:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db_file.parent / ".ganlab.lock", "a")
    except OSError as error:
        raise InputError(f"tracking.uri: cannot create the store {uri} ({error}); pick a writable folder.") from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        artifact_location = (db_file.parent / "artifacts" / experiment).as_uri()
        return _store_call(uri, lambda: _get_or_create_experiment(MlflowClient(tracking_uri=uri), experiment, artifact_location))


def open_reader(uri: str | None, experiment: str | None = None, option: str = "--tracking-uri") -> tuple[MlflowClient, str | None]:
    """Client (and the experiment's id) of an existing store; never creates a store or an experiment."""
    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise InputError(
            f"{option}: the SQLite store {uri.removeprefix('sqlite:///')!r} does not exist. Run this command "
            "in the directory where you trained (its mlruns/ holds the store) or pass "
            f"{option} sqlite:////path/to/mlruns/mlflow.db."
        )
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    client = MlflowClient(tracking_uri=uri)
    if experiment is None:
        return client, None
    found = _store_call(uri, lambda: client.get_experiment_by_name(experiment))
    if found is None:
        names = sorted(e.name for e in _store_call(uri, client.search_experiments))
        raise InputError(f"--experiment: no experiment {experiment!r} in {uri}; it holds: {', '.join(names) or 'none'}.")
    return client, found.experiment_id


def _store_call(uri: str, call):
    """Run one store call; a broken store or a failing server becomes an InputError naming the URI."""
    try:
        return call()
    except MlflowException as error:
        raise InputError(f"tracking.uri: the MLflow store {uri} failed ({error.message.splitlines()[0][:300]}).") from error
    except Exception as error:  # SQLAlchemy's errors for a file that is not a database, and the like
        if type(error).__module__.startswith(("sqlalchemy", "requests", "urllib3")):
            raise InputError(f"tracking.uri: the MLflow store {uri} cannot be used ({type(error).__name__}: {str(error).splitlines()[0][:300]}).") from error
        raise


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


def find_run(client: MlflowClient, run_id: str, option: str = "--run-id"):
    """The run `run_id`, or InputError saying where it was looked for."""
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise InputError(f"{option}: no MLflow run {run_id!r} in {client.tracking_uri}.") from error


def sweep_children(client: MlflowClient, experiment_id: str, parent_id: str | None = None):
    """(parent run id, child runs in job order) of a sweep; the newest sweep when `parent_id` is None."""
    if parent_id is None:
        parents = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_PARENT_TAG}` = 'true'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise InputError("--parent: the experiment has no sweep; run one with -m, or name a parent run id.")
        parent_id = parents[0].info.run_id
    children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'",
                                  max_results=10000)
    return parent_id, sorted(children, key=lambda child: int(child.data.tags.get("sweep.job_num", 0)))


def metric_histories(client: MlflowClient, run_id: str, names) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of one run, each history fetched once (the last value of a step wins)."""
    return {name: {point.step: point.value for point in client.get_metric_history(run_id, name)} for name in names}


# Short names for run names, where a knob's full name would not fit the UI's column.
SHORT_KEYS = {"label_smoothing": "ls", "optimizer.lr": "lr", "optimizer.beta_1": "beta_1", "eval.num_samples": "n_eval"}
RUN_NAME_LENGTH = 40


def run_name(overrides, keys=None) -> str:
    """A short run name from `key=value` overrides: only `keys` (a sweep's swept keys) if given,
    never paths or tracking keys; e.g. `dropout=0.1 ls=0`. At most RUN_NAME_LENGTH characters."""
    parts = []
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if (keys is not None and key not in keys) or key.startswith(("data.path", "tracking.", "hydra", "resume")):
            continue
        parts.append(f"{SHORT_KEYS.get(key, key)}={_short_value(value)}")
    name = " ".join(parts) or "default"
    return name if len(name) <= RUN_NAME_LENGTH else name[: RUN_NAME_LENGTH - 1] + "~"


def _short_value(value: str) -> str:
    try:
        return format(float(value), "g") if "." in value or "e" in value.lower() else value
    except ValueError:
        return value


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'name': 'mlp'}} -> {'model.name': 'mlp'}; lists stay values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


# Config keys that say where and how a job runs, not what it trains: kept in config.yaml, not params.
NOT_PARAMS = ("tracking.", "resume", "checkpoint.")


def run_params(config: dict) -> dict[str, Any]:
    """A run's params: one per knob the run used, from the resolved config.

    Nulls are left out (the job logs the value it resolved them to, e.g. steps_per_epoch
    and threads), as are the tracking and resume keys and, with evaluation off, the
    evaluation settings.
    """
    params = {}
    for key, value in flatten(config).items():
        if value is None or key.startswith(NOT_PARAMS):
            continue
        if key.startswith("eval.") and key != "eval.enabled" and not config.get("eval", {}).get("enabled", True):
            continue
        params[key] = value
    return params


def environment_tags() -> dict[str, str]:
    """Git commit and dirtiness of the code, versions of what ran it, and who and what started it."""
    tags = {"version.python": platform.python_version(), "version.ganlab": _version("ganlab")}
    for package in PACKAGES:
        tags[f"version.{package}"] = _version(package)
    commit, dirty = _git_state(PROJECT_ROOT)
    tags["git.commit"] = commit
    tags["git.dirty"] = dirty
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    tags["mlflow.user"] = _user()
    return tags


class JobRun:
    """One MLflow run for one job, closed with the right status whatever happens.

    Use as a context manager: on a normal exit the run ends FINISHED; on an exception it
    ends FAILED (KILLED for Ctrl-C or SIGTERM) with a `failure_reason` tag and an
    `error.txt` artifact, and the exception goes on. Metrics logged before stay. Once the
    run exists, any failure, even while it is being opened or closed, still ends it:
    every step of closing is best-effort and none can stop `set_terminated`.
    """

    def __init__(self, uri: str | None, experiment: str, output_dir: Path, run_name: str, tags: dict[str, Any],
                 parent_run_id: str | None = None, log_file: Path | None = None, resume_run_id: str | None = None,
                 system_metrics: bool = False):
        self.uri, self.experiment = uri, experiment
        self.output_dir = Path(output_dir)
        self.run_name = run_name
        self.tags = {key: str(value) for key, value in tags.items()}  # a server takes strings only
        if parent_run_id:
            self.tags[PARENT_RUN_TAG] = parent_run_id
        self.log_file = log_file
        self.resume_run_id = resume_run_id
        self.system_metrics = system_metrics
        self.client: MlflowClient | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._closers: list = []  # called first when the run ends (e.g. a system-metrics monitor)

    def __enter__(self) -> "JobRun":
        self.client, self.experiment_id = open_store(self.uri, self.experiment)
        tags = {**environment_tags(), **self.tags}
        if self.resume_run_id:  # the same run goes on: params stay as first logged
            self.run_id = self.resume_run_id
            self._guarded(lambda: (self.client.update_run(self.run_id, status="RUNNING"), self.set_tags(tags)))
            log.info("MLflow run %s resumed in %s", self.run_id, resolve_uri(self.uri))
        else:
            run = _store_call(resolve_uri(self.uri), lambda: self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags))
            self.run_id = run.info.run_id
            log.info("MLflow run %s (%s) in %s", self.run_id, self.run_name, resolve_uri(self.uri))
        if self.system_metrics:
            self._guarded(self._start_system_metrics)
        return self

    def _start_system_metrics(self) -> None:
        """MLflow's own sampler of CPU, memory, disk, network (and NVIDIA GPU, with nvidia-ml-py)
        use: `system/...` metrics every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL) from a
        background thread, until the run closes."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as error:  # psutil missing
            log.warning("tracking.system_metrics: %s, so this run logs no system metrics (pip install psutil).", error)
            return
        monitor = SystemMetricsMonitor(self.run_id, resume_logging=self.resume_run_id is not None,
                                       tracking_uri=resolve_uri(self.uri))
        monitor.start()
        self.on_close(monitor.finish)

    def _guarded(self, action) -> None:
        """Do `action` while opening; if it fails the run is closed FAILED before the error goes on."""
        try:
            action()
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise

    def start(self, params: dict[str, Any], config_file: Path | None = None) -> None:
        """The first logging of a new run: its params and resolved config."""
        self.log_params(params)
        if config_file is not None:
            self.log_artifact(config_file)

    def on_close(self, action) -> None:
        self._closers.append(action)

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

    def log_image(self, image, key: str, step: int) -> None:
        """An image (an array, or a PNG file) under `key` at `step`: the UI shows it with a step
        slider and side by side in the chart view. MLflow stores it as the artifact
        `images/<key>+step+<step>+...png` (and a small .webp) and tags the run `mlflow.loggedImages`."""
        if isinstance(image, (str, Path)):
            from PIL import Image

            with Image.open(image) as picture:
                image = picture.convert("RGB")
        self.client.log_image(self.run_id, image, key=key, step=step)

    def log_dataset(self, name: str, digest: str, source: str, profile: dict | None = None) -> None:
        """The training data as the run's dataset input (the UI's Dataset column): its name, the
        start of its content hash (the whole one goes into a tag) and the file it was read from."""
        dataset = Dataset(name=name, digest=digest[:DIGEST_LENGTH], source_type="local",
                          source=json.dumps({"uri": source}), profile=json.dumps(profile) if profile else None)
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, "training")])])

    def log_model(self, model, name: str, input_example, step: int, register_as: str | None = None) -> str:
        """A Keras model as an MLflow Model of this run (the UI's Models column), with its
        signature and input example, loadable anywhere with
        `mlflow.pyfunc.load_model(uri).predict(inputs)`; also registered in the Model Registry
        under `register_as` when given. Returns the model's URI (models:/<model id>).

        The run is passed by id: no active run is started, so the run's status stays JobRun's
        business. MLflow's model logging reads the process-wide tracking URI, which points at
        this store for the call only. The TensorFlow flavor is used because the Keras one fails
        on an input example in MLflow 3.x (mlflow/mlflow#16183); it loads the same .keras file.
        """
        import mlflow.tensorflow
        from mlflow.models import Model, infer_signature

        signature = infer_signature(input_example, model.predict(input_example, verbose=0))
        params = self.client.get_run(self.run_id).data.params
        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id, params=params)
        requirements = [f"{package}=={_version(package)}" for package in ("tensorflow", "keras")]
        # MLflow checks the input example with `model.predict`, whose progress bar goes to stdout.
        with _tracking_uri_set_to(resolve_uri(self.uri)), contextlib.redirect_stdout(io.StringIO()):
            info = Model.log(artifact_path=None, name=name, flavor=mlflow.tensorflow, model=model, run_id=self.run_id,
                             model_id=logged.model_id, step=step, signature=signature, input_example=input_example,
                             pip_requirements=requirements, registered_model_name=register_as)
        return info.model_uri

    def logged_steps(self, metric: str) -> set[int]:
        return {point.step for point in self.client.get_metric_history(self.run_id, metric)}

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def __exit__(self, error_type, error, trace) -> bool:
        if self.run_id is None:
            return False
        for close in self._closers:
            self._safely(close)
        if error is None:
            status = RunStatus.FINISHED
        else:
            interrupted = isinstance(error, KeyboardInterrupt)
            status = RunStatus.KILLED if interrupted else RunStatus.FAILED
            reason = "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(error).__name__}: {error}"
            log.info("run %s ends %s", self.run_id, RunStatus.to_string(status))
            error_file = self.output_dir / "error.txt"
            self._safely(lambda: error_file.write_text("".join(traceback.format_exception(error_type, error, trace))))
            self._safely(lambda: self.set_tags({"failure_reason": reason[:5000]}))
            if error_file.is_file():
                self._safely(lambda: self.log_artifact(error_file))
        if self.log_file is not None and Path(self.log_file).exists():
            for handler in logging.getLogger().handlers:
                self._safely(handler.flush)
            self._safely(lambda: self.log_artifact(Path(self.log_file)))
        self._safely(lambda: self.client.set_terminated(self.run_id, RunStatus.to_string(status)))
        return False

    @staticmethod
    def _safely(action) -> None:
        # While closing a run, a second error (a full disk, a lost server) must not hide the
        # first one or keep the run from being terminated.
        try:
            action()
        except Exception as error:  # noqa: BLE001
            log.warning("while closing the run: %s: %s", type(error).__name__, error)


@contextlib.contextmanager
def _tracking_uri_set_to(uri: str):
    """The process-wide tracking URI set to `uri` for a block, then put back as it was."""
    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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

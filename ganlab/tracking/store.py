"""The one way into MLflow: open a store, find a run, list a sweep's children, name and describe runs.

Everything goes through an explicit `MlflowClient` (no global active run), so a failed
job cannot leak its run into the next job of the same process. Writers open a store
with `open_store` (creating the SQLite file, schema and experiment under a file lock);
readers use `open_reader`, which never creates anything. The default store is a SQLite
database in `mlruns/` of the directory the command runs in, with artifacts in
`mlruns/artifacts/<experiment>/` given as an absolute location, so `mlflow ui` finds
them from anywhere. Calls to a tracking server are bounded in time (see
`bound_server_waits`). A job's own run, opened and closed whatever happens, is
`ganlab.tracking.job_run.JobRun`, built on this module. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ganlab.core import filelock, interrupts
from ganlab.core.config import WHERE_KEYS
from ganlab.core.defaults import flatten  # a run's params: the config with dotted keys
from ganlab.core.errors import InputError
from ganlab.tracking.ui_app import APP_NAME as UI_APP, MODEL_TRAINING_VIEW  # `mlflow ui --app-name ganlab`

log = logging.getLogger(__name__)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow sets INFO when imported: no schema-migration chatter
# A failing store is said once, by StoreError: not by every retry and every background sampler too.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # logs each database error with its traceback

PARENT_RUN_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # a run's description, rendered as Markdown by the UI
NOTE_LIMIT = 8000  # MLflow keeps a tag's first 8,000 characters and warns: a description is cut to it first (core.markdown.cut)

SWEEP_PARENT_TAG = "sweep.parent"
JOB_NUM_TAG = "sweep.job_num"  # a sweep child's job number in its sweep
OVERRIDES_TAG = "hydra.overrides"  # a run's command-line overrides, as typed
OUTPUT_DIR_TAG = "output_dir"  # the folder of a job's files and checkpoint
SWEEP_ID_TAG = "sweep.id"  # a sweep child's sweep: its parent run id (or the sweep folder)
# A sweep parent's params (a job never logs a `sweep.` param: NOT_PARAMS), each followed by the key as typed:
SWEEP_FIXED_PARAM = "sweep.fixed."  # a value the command (or the named sweep) gives every job, e.g. sweep.fixed.epochs
SWEEP_SWEPT_PARAM = "sweep.swept."  # the values a key is swept over, as typed, e.g. sweep.swept.dropout = 0.1,0.3
DATA_SOURCE_TAG = "data.source"  # where a run's data came from, in words
DATA_SHA_TAG = "data.sha256"  # the sha256 of the data a run trained on: written once, checked on resume
CLASSIFIER_SHA_TAG = "eval.classifier_sha256"  # the sha256 of the weights that scored a run (the evaluator's scoring_tags)
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the UI's badge beside a run's dataset
DIGEST_LENGTH = 12  # a dataset digest as the UI shows it, like a short git hash (MLflow stores at most 36)
SERVER_TIMEOUT_S = 10
# Bounded waits on a tracking server (each can be overridden in the environment): a
# request gives up after 10 s and is retried once (about 21 s in all), so a server whose
# API hangs fails a job within HANG_BOUND_S instead of MLflow's default of many minutes.
SERVER_WAIT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no download bars in the console
}


# Once a store has failed, the run is closed with one short try (CLOSING_WAITS), so a hung
# server stops the job within about 21 s (the failing request) + 5 s (marking it FAILED) +
# what the job does in between: HANG_BOUND_S is the documented bound (docs/reliability.md).
CLOSING_WAITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
HANG_BOUND_S = 45


class StoreError(InputError):
    """The tracking store failed (a server that hangs or errs, a full disk, a read-only
    folder): the message names the store and the cause in one line."""

    def __init__(self, message: str, uri: str):
        super().__init__(message)
        self.uri = uri


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


ML_VIEW = f"workflowType={MODEL_TRAINING_VIEW}"  # in a URL: MLflow 3's UI opens it for model training, not GenAI
# MLflow's tag for an experiment's kind, set on every one ganlab writes to; MLflow 3.17's UI ignores it (ui_app)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = {EXPERIMENT_KIND_TAG: "custom_model_development"}
# An experiment tag holding a runs-table view (filter, sort, columns) as JSON: the UI applies it
# when the URL names it with ?viewStateShareKey=<key> (the state MLflow's own "Share" button saves).
SHARED_VIEW_TAG = "mlflow.sharedViewState."
UI_PORT = 5000


def run_link(experiment_id: str, run_id: str | None = None, artifact: str | None = None) -> str:
    """The UI's address of a run (or of an experiment's runs) relative to the UI's root, in model-training mode:
    a Markdown link in a run's description opens it in the UI as it is. With `artifact` (a path in the run's
    artifacts), the run's Artifacts tab showing that file: MLflow 3.17 draws a picture there whole, at once."""
    path = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    if run_id and artifact:
        path += f"/artifacts/{artifact}"
    return f"{path}?{ML_VIEW}"


def view_link(experiment_id: str, view_key: str) -> str:
    """The experiment's runs table as the shared view `view_key` (an experiment tag) sets it, in model-training mode."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={view_key}&{ML_VIEW}"


def ui_hint(uri: str | None, experiment_id: str | None = None, run_id: str | None = None,
            view_key: str | None = None, artifact: str | None = None) -> str:
    """The `mlflow ui` command for this store (runnable as pasted) and the URL of the run (or experiment;
    with `artifact`, of that file of the run, e.g. its newest sample grid); with `view_key`, a line with
    the URL of the runs table as that shared view sets it."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        base, command = uri.rstrip("/"), None
    else:
        # Quoted, so a path with a space or non-ASCII letters can be pasted; and this
        # interpreter's own mlflow, which may not be the one on PATH.
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        program = shlex.quote(str(mlflow_cli)) if mlflow_cli.is_file() else "mlflow"
        base = f"http://127.0.0.1:{UI_PORT}"
        # The port hint is a shell comment, so the line still runs as pasted.
        command = (f"{program} ui --backend-store-uri {shlex.quote(uri)} --port {UI_PORT} --app-name {UI_APP}"
                   f"  # {UI_PORT} taken? --port N, and :N in the URLs")
    # The URL says model training too: for a browser whose switch someone set to GenAI, and a UI
    # started without `--app-name ganlab` (see ganlab.tracking.ui_app).
    url = f"{base}/{run_link(experiment_id, run_id, artifact)}" if experiment_id else base
    lines = ([f"look at it: {command}"] if command else []) + [f"then open {url}"]
    if experiment_id and view_key:
        lines.append(f"runs table, best first: {base}/{view_link(experiment_id, view_key)}")
    return "\n".join(lines)


def open_store(uri: str | None, experiment: str) -> tuple[MlflowClient | interrupts.HeldCalls, str]:
    """Client and experiment id for `experiment` at `uri`, creating both if needed (for writers).

    A SQLite store's file, schema and experiment are created under a file lock, so jobs
    and sweeps started at the same moment never race on a migration. A server URI is
    checked first, so a server that does not answer fails fast with a clear message.
    On a database store every call of the client is held (`interrupts.HeldCalls`): a stop never cuts one short,
    so a sweep's own writes (its parent run, summary and closing) are as safe as a job's through `store_call`.
    """
    uri = resolve_uri(uri)
    check_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    if not uri.startswith("sqlite:///"):
        client, experiment_id = store_call(uri, lambda: _get_or_create_experiment(MlflowClient(tracking_uri=uri), experiment, None))
        return (interrupts.HeldCalls(client) if is_database(uri) else client), experiment_id
    db_file = Path(uri.removeprefix("sqlite:///"))
    try:
        lock = filelock.open_lock_file(db_file.parent, ".ganlab.lock")
    except OSError as error:
        raise InputError(f"tracking.uri: cannot create the store {uri} ({error}); pick a writable folder.") from error
    with lock:
        filelock.flock(lock)
        artifact_location = (db_file.parent / "artifacts" / experiment).as_uri()
        client, experiment_id = store_call(
            uri, lambda: _get_or_create_experiment(MlflowClient(tracking_uri=uri), experiment, artifact_location))
    return interrupts.HeldCalls(client), experiment_id


def open_reader(uri: str | None, experiment: str | None = None, option: str = "--tracking-uri") -> tuple[MlflowClient, str | None]:
    """Client (and the experiment's id) of an existing store; never creates a store or an experiment."""
    uri = resolve_uri(uri)
    check_uri(uri, option)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise InputError(
            f"{option}: the SQLite store {uri.removeprefix('sqlite:///')!r} does not exist. Run this command "
            "in the directory where you trained (its mlruns/ holds the store) or pass "
            f"{option} sqlite:////path/to/mlruns/mlflow.db."
        )
    if uri.startswith(("http://", "https://")):
        check_server(uri, option)
    client = MlflowClient(tracking_uri=uri)
    if experiment is None:
        return client, None
    found = store_call(uri, lambda: client.get_experiment_by_name(experiment), option)
    if found is None:
        names = sorted(e.name for e in store_call(uri, client.search_experiments, option))
        raise InputError(f"--experiment: no experiment {experiment!r} in {uri}; it holds: {', '.join(names) or 'none'}.")
    return client, found.experiment_id


def is_database(uri: str) -> bool:
    """A store MLflow reaches through SQLAlchemy (SQLite, PostgreSQL, MySQL, ...), not over HTTP."""
    return "://" in uri and not uri.startswith(("http://", "https://", "databricks"))


def check_uri(uri: str, option: str = "tracking.uri") -> None:
    """Refuse, before anything is created, a SQLite path relative to the working folder that leaves it
    (`sqlite:///../../x.db`; an absolute `sqlite:////...` may be anywhere) and a database URI whose
    driver is not installed (`mysql://` needs mysqlclient, `mysql+pymysql://` PyMySQL, ...)."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if not Path(path).is_absolute() and not Path(path).resolve().is_relative_to(Path.cwd().resolve()):
            raise InputError(f"{option}: the SQLite path {path!r} is relative and leads out of the working folder "
                             f"{str(Path.cwd())!r}; give an absolute one (four slashes: sqlite:////abs/path/mlflow.db) "
                             "or a path inside this folder (sqlite:///mlruns/mlflow.db).")
        return
    if not is_database(uri):
        return
    import sqlalchemy

    try:
        sqlalchemy.engine.make_url(uri).get_dialect().import_dbapi()
    except ImportError as error:
        raise InputError(f"{option}: {uri.split('://', 1)[0]}:// stores need a database driver that is not installed "
                         f"({error}); install it (e.g. pip install mysqlclient for mysql://, pymysql for "
                         "mysql+pymysql://, psycopg2-binary for postgresql://) or use the default SQLite store "
                         "(tracking.uri=null).") from None
    except Exception as error:  # noqa: BLE001 - an unknown dialect or a malformed URL
        raise InputError(f"{option}: {uri.split('@')[-1]!r} is not a database URI SQLAlchemy can open ({error}); "
                         "expected e.g. postgresql://user:pass@host/db, or tracking.uri=null.") from None


def store_call(uri: str, call, option: str = "tracking.uri"):
    """Run one store call; a broken store or a failing server becomes a StoreError naming the URI and the cause.
    On a database store, a job's stop signal waits for the call to return (`ganlab.core.interrupts`)."""
    try:
        with interrupts.held() if is_database(uri) else contextlib.nullcontext():
            return call()
    except Exception as error:
        # inside a store call, an OSError is the store's too: its artifact folder is full or read-only
        failure = store_failure(uri, error, option, os_errors=True)
        if failure is None:
            raise
        raise failure from error


def is_store_failure(error: BaseException) -> bool:
    """An error of MLflow, SQLAlchemy, SQLite or HTTP: the store, not the job, failed."""
    return isinstance(error, (MlflowException, StoreError)) or type(error).__module__.startswith(
        ("sqlalchemy", "sqlite3", "requests", "urllib3", "mlflow"))


def store_failure(uri: str, error: BaseException, option: str = "tracking.uri", os_errors: bool = False) -> StoreError | None:
    """The one-line StoreError for a store's `error` (None when it is not the store's)."""
    if isinstance(error, StoreError):
        return error
    if not (is_store_failure(error) or (os_errors and isinstance(error, OSError))):
        return None
    text = str(getattr(error, "message", None) or error)
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        cause = (f"the server did not answer within MLFLOW_HTTP_REQUEST_TIMEOUT="
                 f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s; set it higher for a slow server")
    elif "database or disk is full" in lowered or "no space left" in lowered:
        cause = "the disk holding it is full; free some space"
    elif "readonly database" in lowered or "read-only" in lowered or "permission denied" in lowered or "unable to open database file" in lowered:
        cause = "it cannot be written (a read-only folder or file?); make it writable"
    elif "error responses" in lowered:
        cause = "the server answered every try with an error (HTTP 5xx); look at its log"
    elif "connection refused" in lowered or "failed to establish" in lowered:
        cause = "the server stopped answering (connection refused)"
    else:
        first = " ".join(text.split())[:300]
        cause = f"{type(error).__name__}: {first}"
    return StoreError(f"{option}: the MLflow store {uri} failed: {cause}.", uri)


def _get_or_create_experiment(client: MlflowClient, experiment: str, artifact_location: str | None):
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        _mark_model_training(client, found)
        return client, found.experiment_id
    try:
        return client, client.create_experiment(experiment, artifact_location=artifact_location, tags=MODEL_TRAINING)
    except MlflowException:  # another process created it first
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        _mark_model_training(client, found)
        return client, found.experiment_id


def _mark_model_training(client: MlflowClient, experiment) -> None:
    """An experiment ganlab writes to opens in MLflow's model-training mode (also one made before, or by others)."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING[EXPERIMENT_KIND_TAG]:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING[EXPERIMENT_KIND_TAG])


def check_server(uri: str, option: str = "tracking.uri") -> None:
    """Raise InputError unless an MLflow server answers at `uri` within SERVER_TIMEOUT_S."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S).raise_for_status()
    except requests.RequestException as error:
        raise InputError(
            f"{option}: no MLflow server answers at {uri} ({type(error).__name__}). Start one "
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
    return parent_id, sorted(with_infinities(children), key=lambda child: int(child.data.tags.get(JOB_NUM_TAG, 0)))


def metric_histories(client: MlflowClient, run_id: str, names) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of one run, each history fetched once (the last value of a step wins)."""
    return {name: {point.step: as_logged(point.value) for point in client.get_metric_history(run_id, name)}
            for name in names}


# MLflow's SQL stores (SQLite, and PostgreSQL behind a server) keep an infinite metric as ±sys.float_info.max
# (SqlAlchemyStore._log_metrics). Read back through these two it is infinite again: the worst per-class FID
# of a class never drawn is inf, not a number to average (a mean of two of them overflows).
def as_logged(value: float) -> float:
    """A metric's value as it was logged: ±inf where the store keeps ±sys.float_info.max."""
    return math.copysign(math.inf, value) if abs(value) == sys.float_info.max else value


def with_infinities(runs):
    """`runs` (from search_runs), each with its latest metrics as logged (`as_logged`), in place."""
    for run in runs:
        latest = run.data.metrics  # the run's own dict, which every reader of the run sees
        latest.update({name: as_logged(value) for name, value in latest.items()})
    return runs


# Short names for run names, where a knob's full name would not fit the UI's column.
SHORT_KEYS = {"label_smoothing": "ls", "optimizer.lr": "lr", "optimizer.beta_1": "beta_1", "eval.num_samples": "n_eval"}
RUN_NAME_LENGTH = 40
# Overrides that say how long a job trains or how it is scored rather than what it trains:
# a single run's name gives them last, so what changes the model is what a short name keeps.
NAMED_LAST = ("epochs", "steps_per_epoch", "eval.", "objective", "deterministic")


def setting(values: dict[str, str], keys=None) -> str:
    """`dropout=0.1 ls=0`: the `key=value` pairs of `values` (in the order of `keys` if given), short key names
    and numbers as `g` writes them. A sweep's child is named by it; the sweep's tables and montages label with it."""
    keys = list(values) if keys is None else [key for key in keys if key in values]
    return " ".join(f"{SHORT_KEYS.get(key, key)}={_short_value(str(values[key]))}" for key in keys)


def run_name(overrides, keys=None) -> str:
    """A short run name from `key=value` overrides: only `keys` (a sweep's swept keys) if given,
    never paths or tracking keys; e.g. `dropout=0.1 ls=0`. At most RUN_NAME_LENGTH characters:
    a single run names what changes the model first (`NAMED_LAST` last), and what does not fit
    is left out whole and counted (`dropout=0.5 lr=0.001 +2`; all overrides are in the run's
    `hydra.overrides` tag), never cut mid-word."""
    values = {}
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if (keys is not None and key not in keys) or key.startswith((*WHERE_KEYS, *NOT_PARAMS, "hydra")):
            continue
        values[key] = value
    order = list(values) if keys is not None else sorted(values, key=lambda key: key.startswith(NAMED_LAST))
    parts = [setting(values, [key]) for key in order]
    if not parts:
        return "default"
    kept = []
    for count, part in enumerate(parts):
        left = len(parts) - count - 1
        candidate = " ".join([*kept, part])
        if len(candidate) + (len(f" +{left}") if left else 0) > RUN_NAME_LENGTH:
            break
        kept.append(part)
    dropped = len(parts) - len(kept)
    if not kept:  # a first value too long for a name: its key and an ellipsis
        kept, dropped = [parts[0].split("=", 1)[0][: RUN_NAME_LENGTH - 6] + "=…"], dropped - 1
    return " ".join(kept) + (f" +{dropped}" if dropped else "")


def _short_value(value: str) -> str:
    try:
        return format(float(value), "g") if "." in value or "e" in value.lower() else value
    except ValueError:
        return value


# Config keys that say where and how a job runs, not what it trains (data.download: how the data is found,
# not which): kept in config.yaml, not params.
NOT_PARAMS = ("tracking.", "resume", "checkpoint.", "sweep.", "settle.", "data.download")  # settle.: how a settle sweep spends seeds


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

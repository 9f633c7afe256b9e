"""A job's MLflow run: opened, written and closed with the right status, whatever happens.

`JobRun` is the only writer of a training job's run. Beside params, tags and metrics it
logs what the UI shows: images per step, the training data as the run's dataset input,
the generator as an MLflow Model, and MLflow's system metrics. Stores, readers and run
names are `ganlab.tracking.store`'s; nothing here imports TensorFlow until a model is logged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import time
import traceback
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from ganlab.core import machine
from ganlab.core.errors import RunNotMarked
from ganlab.tracking.run_lock import AlreadyFinished, RunLock, closable
from ganlab.tracking.store import JOB_NUM_TAG
from ganlab.tracking.store import (CLOSING_WAITS, DATASET_CONTEXT_TAG, DIGEST_LENGTH, PARENT_RUN_TAG, StoreError,
                             open_store, resolve_uri, store_call, store_failure)

FAILURE_TAG = "failure_reason"
MACHINE_TAG_PREFIX = "machine."  # the machine a run ran on: machine.cpu_model, machine.isa, machine.threads, ...
# A run's colour in the UI's charts and runs table: MLflow 3.17 reads this run tag (a CSS colour) when it
# loads runs. Every job of a sweep gets its own, by job number, so no two of its first 20 share one.
RUN_COLOR_TAG = "mlflow.runColor"
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf", "#0b3d6b", "#a65200", "#145a14", "#7a1212", "#4b2f73", "#4a2c25", "#a0196e", "#3a3a3a",
              "#6b6b0c", "#0b6570")


def run_color(job_num) -> str:
    """The colour of a sweep's job `job_num` (0-based) in the UI's charts."""
    return RUN_COLORS[int(job_num) % len(RUN_COLORS)]


def machine_tags(threads: int | None) -> dict[str, str]:
    """The machine a run runs on (`ganlab.core.machine`: its numbers are comparable only on the same kind) as tags."""
    return {f"{MACHINE_TAG_PREFIX}{key}": value for key, value in machine.describe(threads).items()}


LEFT_OPEN = ("RUNNING", "SCHEDULED")  # a run's states while its process works on it


def close_left_running(client, run, status: str, reason: str, holder_ended: bool = False) -> bool:
    """Close `run` (an MLflow Run) that a process which is gone left RUNNING: `status` (FAILED or KILLED)
    and `reason` as its failure reason. A run that a live process holds stays as it is (`run_lock.closable`),
    unless the caller knows its holder has ended (`holder_ended`: SLURM says the job is over, while its
    heartbeat may look fresh for a while). True if the run was closed here."""
    if run.info.status not in LEFT_OPEN or not (holder_ended or closable(run)):
        return False
    client.set_tag(run.info.run_id, FAILURE_TAG, str(reason)[:5000])
    client.set_terminated(run.info.run_id, status)
    return True

log = logging.getLogger("ganlab.tracking.store")


class JobRun:
    """One MLflow run for one job, closed with the right status whatever happens.

    Use as a context manager: on a normal exit the run ends FINISHED; on an exception it
    ends FAILED (KILLED for Ctrl-C or SIGTERM) with a `failure_reason` tag and an
    `error.txt` artifact, and the exception goes on. Metrics logged before stay. Once the
    run exists, any failure, even while it is being opened or closed, still ends it:
    every step of closing is best-effort and none can stop `set_terminated`.

    Every write goes through `store_call`, so a failing store (a server that hangs or
    errs, a full disk, a read-only folder) raises one `StoreError` naming the store and
    the cause. The run is then closed with one short try, FAILED first and nothing else
    unless that worked; `marked` says whether it was (False: the run may stay RUNNING,
    and the error's line says how to mend it once the store works again).
    """

    def __init__(self, uri: str | None, experiment: str, output_dir: Path, run_name: str, tags: dict[str, Any],
                 parent_run_id: str | None = None, log_file: Path | None = None, resume_run_id: str | None = None,
                 system_metrics: bool = False, threads: int | None = None):
        self.uri, self.experiment = uri, experiment
        self.output_dir = Path(output_dir)
        self.run_name = run_name
        self.tags = {key: str(value) for key, value in tags.items()}  # a server takes strings only
        if parent_run_id:
            self.tags[PARENT_RUN_TAG] = parent_run_id
        self.log_file = log_file
        self.resume_run_id = resume_run_id
        self.system_metrics = system_metrics
        self.threads = threads  # the job's thread count, among the machine's facts (`machine_tags`)
        self.client: MlflowClient | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._closers: list = []  # called first when the run ends (e.g. a system-metrics monitor)
        self._monitor = None
        self.marked: bool | None = None  # after closing: whether the run's end status was recorded
        self.lock: RunLock | None = None  # this process's hold on the run (its owner tag)

    def __enter__(self) -> "JobRun":
        self.client, self.experiment_id = open_store(self.uri, self.experiment)
        tags = {**machine.environment_tags(), **machine_tags(self.threads), **self.tags}
        if JOB_NUM_TAG in tags and str(tags[JOB_NUM_TAG]).isdigit():  # a sweep's job: its own colour in the charts
            tags.setdefault(RUN_COLOR_TAG, run_color(tags[JOB_NUM_TAG]))
        if self.resume_run_id:  # the same run goes on: params stay as first logged
            self._take(self.resume_run_id)
            self.run_id = self.resume_run_id
            self._guarded(lambda: (self._store(lambda: self.client.update_run(self.run_id, status="RUNNING")),
                                   self.set_tags(tags), self._clear_failure_reason()))
            log.info("MLflow run %s resumed in %s", self.run_id, resolve_uri(self.uri))
        else:
            self.lock = RunLock(self.client, "", "run")
            tags.update(self.lock.tag())
            run = store_call(resolve_uri(self.uri), lambda: self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags))
            self.run_id = self.lock.run_id = run.info.run_id
            self.lock.claim()
            log.info("MLflow run %s (%s) in %s", self.run_id, self.run_name, resolve_uri(self.uri))
        if self.system_metrics:
            self._guarded(self._start_system_metrics)
        return self

    def _take(self, run_id: str) -> None:
        """Hold the run (its owner tag, compare-and-set: across machines) before it is reopened; a run
        another live process holds is refused, and a FINISHED one (checked under the lock) is never reopened."""
        lock = RunLock(self.client, run_id, "run")
        run = self._store(lock.take)
        if run.info.status == "FINISHED":
            lock.release()
            raise AlreadyFinished(f"run {run_id} has trained all {run.data.params.get('epochs', 'its')} epochs "
                                  "already; nothing to resume (it stays as it was).")
        self.lock = lock

    def tag(self, name: str) -> str | None:
        """The run's tag `name` as the store holds it now (None if absent)."""
        return self._store(lambda: self.client.get_run(self.run_id)).data.tags.get(name)

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
        self._monitor = monitor
        self.on_close(monitor.finish)

    def _store(self, call):
        """One store call; a failure becomes a StoreError naming the store and the cause."""
        return store_call(resolve_uri(self.uri), call)

    def _clear_failure_reason(self) -> None:
        """A resumed run starts clean: the reason an earlier attempt failed no longer applies."""
        run = self._store(lambda: self.client.get_run(self.run_id))
        if FAILURE_TAG in run.data.tags:
            self._store(lambda: self.client.delete_tag(self.run_id, FAILURE_TAG))

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
            self._store(lambda: self.client.log_batch(self.run_id, params=items[start : start + 100]))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._store(lambda: self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._store(lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_series(self, series: dict[str, tuple], chunk: int = 1000) -> None:
        """Many points of a few metrics, {key: (steps, values)}, in `log_batch` calls of at most `chunk`
        points (MLflow's limit per batch): a training epoch's per-step losses in one or two calls."""
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, int(step)) for key, (steps, values) in series.items()
                 for step, value in zip(steps, values)]
        for start in range(0, len(items), chunk):
            self._store(lambda: self.client.log_batch(self.run_id, metrics=items[start : start + chunk]))

    def log_image(self, image, key: str, step: int) -> None:
        """An image (an array, or a PNG file) under `key` at `step`: the UI shows it with a step
        slider and side by side in the chart view. MLflow stores it as the artifact
        `images/<key>+step+<step>+...png` (and a small .webp) and tags the run `mlflow.loggedImages`."""
        if isinstance(image, (str, Path)):
            from PIL import Image

            with Image.open(image) as picture:
                image = picture.convert("RGB")
        self._store(lambda: self.client.log_image(self.run_id, image, key=key, step=step))

    def log_dataset(self, name: str, digest: str, source: str, profile: dict | None = None) -> None:
        """The training data as the run's dataset input (the UI's Dataset column): its name, the
        start of its content hash (the whole one goes into a tag) and the file it was read from."""
        dataset = Dataset(name=name, digest=digest[:DIGEST_LENGTH], source_type="local",
                          source=json.dumps({"uri": source}), profile=json.dumps(profile) if profile else None)
        log_input = lambda: self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, "training")])])  # noqa: E731
        try:
            self._store(log_input)
        except Exception as error:  # noqa: BLE001 - the store's own error, or a StoreError wrapping it
            # Jobs that start together may both insert the experiment's new dataset row: one of them loses
            # on the store's unique key; the row is there now, and a second try only links the run to it.
            if "UNIQUE constraint" not in str(error) and "duplicate key" not in str(error):
                raise
            self._store(log_input)

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
        requirements = [f"{package}=={machine.package_version(package)}" for package in ("tensorflow", "keras")]

        def log() -> str:  # its writes (the logged model, its metrics and files) as one store call
            params = self.client.get_run(self.run_id).data.params
            logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id, params=params)
            # MLflow checks the input example with `model.predict`, whose progress bar goes to stdout.
            with _tracking_uri_set_to(resolve_uri(self.uri)), contextlib.redirect_stdout(io.StringIO()):
                return Model.log(artifact_path=None, name=name, flavor=mlflow.tensorflow, model=model, run_id=self.run_id,
                                 model_id=logged.model_id, step=step, signature=signature, input_example=input_example,
                                 pip_requirements=requirements, registered_model_name=register_as).model_uri

        return self._store(log)

    def logged_steps(self, metric: str) -> set[int]:
        return {point.step for point in self._store(lambda: self.client.get_metric_history(self.run_id, metric))}

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        self._store(lambda: self.client.log_artifact(self.run_id, str(path), artifact_dir))

    def __exit__(self, error_type, error, trace) -> bool:
        if self.run_id is None:
            return False
        failure = store_failure(resolve_uri(self.uri), error) if error is not None else None
        if failure is not None:
            if self.lock is not None:
                self.lock.stop_heartbeat(wait=False)  # its tag goes stale with its process; nothing waits on the store
            self._close_after_store_failure(failure)
            if not self.marked:
                failure = StoreError(f"{failure} Run {self.run_id} could not be marked FAILED there, so it may still "
                                     f"show RUNNING: {self._mend_hint()}.", failure.uri)
            if failure is not error:  # one clear line instead of the store's traceback
                raise failure from error
            return False
        for close in self._closers:
            self._safely(close)
        if error is None:
            status = RunStatus.FINISHED
        else:
            # SystemExit: a scheduler's preemption handler (submitit's, on SIGUSR2) requeued the job and exits.
            interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
            status = RunStatus.KILLED if interrupted else RunStatus.FAILED
            reason = ("preempted: requeued by the scheduler" if isinstance(error, SystemExit) else
                      "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(error).__name__}: {error}")
            log.info("run %s ends %s", self.run_id, RunStatus.to_string(status))
            error_file = self.output_dir / "error.txt"
            self._safely(lambda: error_file.write_text("".join(traceback.format_exception(error_type, error, trace))))
            self._safely(lambda: self.set_tags({FAILURE_TAG: reason[:5000]}))
            if error_file.is_file():
                self._safely(lambda: self.log_artifact(error_file))
        if self.log_file is not None and Path(self.log_file).exists():
            for handler in logging.getLogger().handlers:
                self._safely(handler.flush)
            self._safely(lambda: self.log_artifact(Path(self.log_file)))
        try:
            self._store(lambda: self.client.set_terminated(self.run_id, RunStatus.to_string(status)))
            self.marked = True
            if self.lock is not None:
                self.lock.release()  # after the status: an unheld run is never RUNNING with its process alive
        except Exception as closing:  # noqa: BLE001 - must not hide the error that ended the job
            self.marked = False
            if self.lock is not None:
                self.lock.stop_heartbeat(wait=False)
            log.warning("while closing the run: %s", closing)
            # The job went well (the store failing at the end is the one error), or it was stopped (still a
            # stop, whose line must not say the run was marked): either way, the one line says the run is not.
            if error is None or isinstance(error, KeyboardInterrupt):
                failure = store_failure(resolve_uri(self.uri), closing, os_errors=True) or StoreError(
                    f"tracking.uri: the MLflow store {resolve_uri(self.uri)} failed: {closing}.", resolve_uri(self.uri))
                unmarked = (f"{failure} Run {self.run_id} could not be marked {RunStatus.to_string(status)} there, "
                            f"so it may still show RUNNING: {self._mend_hint()}.")
                if error is None:
                    raise StoreError(unmarked, failure.uri) from closing
                raise RunNotMarked(error, unmarked) from error
        return False

    def _mend_hint(self) -> str:
        """How to close a run that could not be marked, once its store works again."""
        uri = resolve_uri(self.uri)
        if (self.output_dir / "checkpoint" / "checkpoint.npz").is_file():
            return (f"once the store works again, `python -m ganlab.train resume={shlex.quote(str(self.output_dir))}` "
                    "continues it and closes it")
        if self.resume_run_id:
            return (f"once the store works again, `python -m ganlab.train resume={self.run_id} "
                    f"tracking.uri={shlex.quote(uri)}` continues it and closes it")
        return (f"it stopped before its first checkpoint, so there is nothing to continue; once the store works again, "
                f"`MLFLOW_TRACKING_URI={shlex.quote(uri)} mlflow runs delete --run-id {self.run_id}` removes it")

    def _close_after_store_failure(self, failure: StoreError) -> None:
        """The store failed: mark the run FAILED with one short try and, only if that
        worked, record why; never wait on the store again (a hung server would hold every call)."""
        log.info("run %s: %s; marking it FAILED", self.run_id, failure)
        if self._monitor is not None:  # stop the sampler without waiting for its pending write
            self._monitor._shutdown_event.set()
        self._safely(lambda: (self.output_dir / "error.txt").write_text(f"{failure}\n"))
        saved = {name: os.environ.get(name) for name in CLOSING_WAITS}
        os.environ.update(CLOSING_WAITS)
        try:
            try:
                self._store(lambda: self.client.set_terminated(self.run_id, "FAILED"))
                self.marked = True
            except Exception as again:  # noqa: BLE001 - said once, by the error that ends the job
                log.info("run %s could not be marked FAILED: %s", self.run_id, again)
                self.marked = False
            if self.marked:
                self._safely(lambda: self.set_tags({FAILURE_TAG: str(failure)[:5000]}))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    @staticmethod
    def _safely(action) -> bool:
        # While closing a run, a second error (a full disk, a lost server) must not hide the
        # first one or keep the run from being terminated. Returns whether `action` worked.
        try:
            action()
        except Exception as error:  # noqa: BLE001
            log.warning("while closing the run: %s: %s", type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "")
            return False
        return True


@contextlib.contextmanager
def _tracking_uri_set_to(uri: str):
    """The process-wide tracking URI set to `uri` for a block, then put back as it was."""
    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)

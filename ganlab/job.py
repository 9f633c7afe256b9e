"""One training job as a recipe: check, build, train with an evaluation every few epochs, save, report.

`run_job(cfg, context)` is what the Hydra entry point calls; `context` holds the facts
only Hydra knows (output folder, overrides, sweep, launcher threads), so nothing here
imports Hydra. A job is one MLflow run (`tracking.JobRun`), resumable from its last
checkpoint (`checkpoint`); the end of every epoch is one `EpochEnd` call
(`ganlab.epochs`), and the files a finished job leaves are written by `ganlab.outputs`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ganlab import checkpoint, config, outputs, runtime, tracking
from ganlab.data import load_dataset
from ganlab.errors import InputError

log = logging.getLogger("ganlab.train")


@dataclass
class JobContext:
    """What the entry point works out from Hydra before a job starts."""

    output_dir: Path
    overrides: list[str]  # this job's command-line overrides, as typed
    run_name: str
    threads: int | None = None  # resolved from the launcher when `threads` is null
    parallel: bool = False  # other jobs run at the same time (one console line per epoch, no bars)
    in_sweep: bool = False
    parent_run_id: str | None = None
    tags: dict = field(default_factory=dict)
    log_file: Path | None = None


class AlreadyFinished(Exception):
    """resume= named a run that has trained all its epochs: nothing to do."""


def run_job(cfg: DictConfig, context: JobContext) -> float | None:
    """Open the job's run and train; returns the objective for a sweeper."""
    config.validate_tracking(cfg)  # a store must be usable before a run can record anything
    resume = None
    if cfg.get("resume"):
        checkpoint.check_overrides(context.overrides)
        _refuse_finished_run(str(cfg.resume), cfg.tracking.uri)
        resume = checkpoint.prepare(str(cfg.resume), cfg, context.overrides, _run_output_dir)
        cfg = resume.config
    threads = cfg.threads if cfg.threads is not None else context.threads
    tags = {**context.tags, **runtime_tags(threads)}
    if resume is None:
        tags["output_dir"] = str(context.output_dir)
    else:
        tags.update({"resumed_from_epoch": resume.checkpoint.epoch, "resumed_from": str(resume.checkpoint.folder)})
    run = tracking.JobRun(cfg.tracking.uri, cfg.tracking.experiment, context.output_dir, context.run_name, tags,
                          parent_run_id=context.parent_run_id, log_file=context.log_file,
                          resume_run_id=resume.checkpoint.run_id if resume else None,
                          system_metrics=cfg.tracking.system_metrics)
    try:
        with signals_as_interrupt(), run:
            return train_job(cfg, context, run, threads, resume)
    finally:
        if resume is not None:
            resume.lock.release()


def train_job(cfg, context: JobContext, run: tracking.JobRun, threads: int | None, resume) -> float | None:
    """Check, build, train, evaluate and save one job; returns the objective."""
    started = time.perf_counter()
    config.validate(cfg)
    warn_about_slow_bf16(cfg.dtype)
    folder = context.output_dir / checkpoint.FOLDER
    with checkpoint.FolderLock(folder):  # no resume of this job while it runs
        config_file = outputs.save_config(resolved(cfg), context.output_dir)
        if resume is None:  # a resumed run keeps the params it was started with
            run.start(tracking.run_params({**resolved(cfg), "threads": threads}), config_file)
            checkpoint.save(folder, [], [], checkpoint.meta(0, run, threads, resolved(cfg)))  # resumable from here on
        dataset, steps = load_data(cfg, run, new_run=resume is None)
        trainer = build_trainer(cfg, dataset, threads)
        from ganlab.epochs import EpochEnd

        epoch_end = EpochEnd(cfg, context.output_dir, run, trainer, build_evaluator(cfg, dataset), threads)
        if resume is not None:
            epoch_end.resume_from(resume)
            epoch_end.save_checkpoint()
            run.set_tags({"output_dir": str(context.output_dir)})  # re-pointed only once a checkpoint is here
        log.info("training %d epochs of %d steps (batch %d) on %s", cfg.epochs, steps, cfg.batch_size, dataset.source)
        first_step_at = time.perf_counter()
        if cfg.epochs == 0:
            epoch_end.score_untrained()
        epoch_end.train(cfg.epochs - trainer.epochs_done, steps, progress_bars=not context.parallel)
        outputs.save_outputs(trainer, epoch_end.history, steps, context.output_dir, run,
                             register_as=cfg.tracking.register_model, best_epoch=epoch_end.best_so_far()[1])
    if cfg.checkpoint.keep == "none":
        checkpoint.remove(context.output_dir)
    objective = epoch_end.objective_value()
    outputs.print_summary(epoch_end, resume.checkpoint.epoch if resume else 0, objective, cfg.objective,
                          time.perf_counter() - started, first_step_at - started, context.output_dir, run)
    return objective


def load_data(cfg, run: tracking.JobRun, new_run: bool):
    """The checked dataset and the resolved steps per epoch; records both on the run."""
    dataset = load_dataset(cfg.data.name, cfg.data.path)
    config.validate_against_data(cfg, len(dataset.x_train))
    steps = config.steps_per_epoch(cfg, len(dataset.x_train))
    digest = dataset.sha256()
    run.set_tags({"data.source": dataset.source, "data.sha256": digest})
    if new_run:  # a resumed run has these from its start
        run.log_params({"steps_per_epoch": steps})
        run.log_dataset(dataset.name, digest, dataset.location(),  # the UI's Dataset column
                        profile={"train images": len(dataset.x_train), "test images": len(dataset.x_test)})
    if cfg.eval.enabled:  # refuse altered weights or a classifier of another dataset before training
        from ganlab import classifier

        run.set_tags({"eval.classifier_sha256": classifier.check(cfg.eval.classifier, dataset.name)[1]})
    return dataset, steps


def build_trainer(cfg, dataset, threads: int | None):
    """Seed and set up TensorFlow (it loads only now, once the input is good), then G, D and their trainer."""
    runtime.configure_tensorflow(cfg.seed, threads, cfg.deterministic)
    from ganlab.gan import GanTrainer
    from ganlab.models import build_nets

    return GanTrainer(*build_nets(cfg), dataset.x_train, batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing,
                      learning_rate=cfg.optimizer.lr, beta_1=cfg.optimizer.beta_1, seed=cfg.seed, ema=cfg.ema)


def warn_about_slow_bf16(dtype: str) -> None:
    from ganlab import machine

    if dtype == "bf16" and not machine.has_native_bf16() and not runtime.has_nvidia_gpu():
        log.warning("dtype=bf16 on a CPU without native bfloat16 (%s; ISA flags: %s): TensorFlow emulates bfloat16 "
                    "with float32 instructions here, so this job will be slower than dtype=fp32, not faster.",
                    machine.cpu_model(), " ".join(machine.isa_flags()) or "none")


def build_evaluator(cfg, dataset):
    """The scoring evaluator (None when evaluation is off). Built after G and D, so their
    initial weights never depend on whether evaluation is on."""
    if not cfg.eval.enabled:
        return None
    from ganlab import classifier
    from ganlab.evaluation import Evaluator

    return Evaluator.from_dataset(dataset, classifier=classifier.load(cfg.eval.classifier, dataset=dataset.name))


def resolved(cfg: DictConfig) -> dict:
    """The job's config with interpolations resolved, without Hydra's own section."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


def runtime_tags(threads: int | None) -> dict:
    from ganlab import machine

    return {f"machine.{key}": value for key, value in machine.describe(threads).items()}


def _run_output_dir(uri: str | None, run_id: str) -> Path:
    """The output folder (holding the checkpoint) that run `run_id` recorded."""
    try:
        client, _ = tracking.open_reader(uri, option="tracking.uri")
    except InputError:
        raise InputError(f"resume: no MLflow run {run_id!r}: there is no store at {tracking.resolve_uri(uri)} "
                         "(give tracking.uri=... where the run lives, or resume=<its output folder>).") from None
    run = tracking.find_run(client, run_id, option="resume")
    if "output_dir" not in run.data.tags:
        raise InputError(f"resume: run {run_id} records no output folder, so its checkpoint cannot be found.")
    return Path(run.data.tags["output_dir"])


def _refuse_finished_run(target: str, uri: str | None) -> None:
    """A FINISHED run has trained all its epochs (only a complete job ends FINISHED): nothing to resume."""
    if Path(target).exists():
        found = checkpoint.find(Path(target))
        uri, target = found.tracking_uri, found.run_id
    try:
        client, _ = tracking.open_reader(uri, option="tracking.uri")
        run = client.get_run(target)
    except Exception:  # no store or no such run: prepare() says so
        return
    if run.info.status == "FINISHED":
        raise AlreadyFinished(f"run {target} has trained all {run.data.params.get('epochs', 'its')} epochs already; "
                              "nothing to resume (it stays as it was).")


@contextlib.contextmanager
def signals_as_interrupt():
    """While a job runs, SIGTERM (a scheduler's or `kill`'s stop) ends it like Ctrl-C, so its
    run is marked KILLED instead of being left RUNNING; the old handler returns afterwards."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


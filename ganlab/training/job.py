"""One training job, top to bottom: its config, build, then the epoch loop, then save and report.

`run_job(cfg, context)` is what the Hydra entry point calls; `context` holds the facts
only Hydra knows (output folder, overrides, sweep, launcher threads), so nothing here
imports Hydra. Before the job starts, resume is looked up once (`ganlab.training.resume.look_up`)
and the config is read once (`ganlab.core.config.typed_config`) into the typed `JobConfig` the job reads;
a refused key ends in a FAILED run. A job is one MLflow run (`ganlab.tracking.job_run.JobRun`), resumable from its last
checkpoint (`ganlab.training.checkpoint`). `train_job` holds the whole loop in one screen: train
an epoch, score it, track the best, checkpoint, log; those steps are small functions in
`ganlab.training.epochs`, the trainer is built by the gan wing (`ganlab.gan.choices.build_trainer`:
model, loss and optimizer from their registries by name), the scoring by the evaluation wing, and
the files a finished job leaves are written by `ganlab.training.outputs`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from ganlab.training import checkpoint
from ganlab.training.resume import look_up, resume_into
from ganlab.core import config
from ganlab.core import interrupts
from ganlab.training import epochs
from ganlab.training import outputs
from ganlab.core import runtime
from ganlab.tracking import store as tracking
from ganlab.core.data import load_dataset
from ganlab.core.errors import InputError
from ganlab.core.job_config import JobConfig, TrackingConfig
from ganlab.gan import choices
from ganlab.tracking.job_run import JobRun

log = logging.getLogger("ganlab.train")


@dataclass
class JobContext:
    """What the entry point works out from Hydra before a job starts."""

    output_dir: Path
    overrides: list[str]  # this job's command-line overrides, as typed
    run_name: str
    threads: int | None = None  # resolved from the launcher when `threads` is null
    progress_bars: bool = True  # False: one console line per epoch only (parallel jobs, a log file, a SLURM job)
    in_sweep: bool = False
    parent_run_id: str | None = None
    tags: dict = field(default_factory=dict)
    log_file: Path | None = None


def run_job(cfg: DictConfig, context: JobContext) -> float | None:
    """Read the config in one pass, find what the job continues, open its run and train; returns the objective for a sweeper."""
    try:
        job = config.typed_config(cfg, choices.registries())
    except config.RefusedConfig as refused:  # recorded in a FAILED run: its tracking keys are good
        with open_run(refused.tracking, context, None, context.threads):
            raise
    resume = look_up(cfg, context.parent_run_id, context.tags.get(tracking.JOB_NUM_TAG), context.overrides)
    job = resume.config if resume is not None else job  # a resumed job trains what its checkpoint holds
    try:
        threads = job.threads if job.threads is not None else context.threads
        with signals_as_interrupt() as stop, open_run(job.tracking, context, resume, threads) as run:
            try:
                return train_job(job, context, run, threads, resume, stop)
            finally:
                stop.now_closing()  # a signal from here on must not cut the run's closing short
    finally:
        if resume is not None:
            resume.lock.release()


def open_run(where: TrackingConfig, context: JobContext, resume, threads: int | None) -> JobRun:
    """The job's MLflow run: a new one, or the one it resumes. Says where the job's outputs go."""
    print(f"ganlab: job outputs in {context.output_dir}", flush=True)
    started_from = ({tracking.OUTPUT_DIR_TAG: str(context.output_dir)} if resume is None else
                    {"resumed_from_epoch": resume.checkpoint.epoch, "resumed_from": str(resume.checkpoint.folder)})
    return JobRun(where.uri, where.experiment, context.output_dir, context.run_name, {**context.tags, **started_from},
                  parent_run_id=context.parent_run_id, log_file=context.log_file,
                  resume_run_id=resume.checkpoint.run_id if resume else None, system_metrics=where.system_metrics,
                  threads=threads)


def train_job(cfg: JobConfig, context: JobContext, run: JobRun, threads: int | None, resume,
              stop: StopRequest) -> float | None:
    """Build, then the loop: train an epoch, score it, track the best, checkpoint, log. Returns the objective."""
    started = time.perf_counter()
    warn_about_slow_bf16(cfg.dtype)
    output_dir = context.output_dir
    with checkpoint.job_lock(output_dir, resume):  # no resume of this job while it runs
        config_file = outputs.save_config(cfg.as_dict(), output_dir)
        if resume is None:  # a resumed run keeps the params it was started with
            run.start(tracking.run_params({**cfg.as_dict(), "threads": threads}), config_file)
            checkpoint.write(output_dir, None, [], run, threads, cfg)  # resumable from here on
        dataset, steps = load_data(cfg, run, new_run=resume is None)  # a bad file or batch size: refused here
        runtime.configure_tensorflow(cfg.seed, threads, cfg.deterministic)  # no TensorFlow op has run before
        trainer = choices.build_trainer(cfg, dataset.x_train)
        from ganlab.evaluation import evaluator as evaluation  # after TensorFlow is configured: it imports Keras

        evaluator, noises = evaluation.for_job(cfg.eval, dataset, cfg.seed, cfg.random_dim)
        score = epochs.EpochScoring(evaluator, noises, run, output_dir, cfg.random_dim, dataset=dataset, seed=cfg.seed)
        history = resume_into(trainer, resume, run, output_dir, threads) if resume else []
        best = epochs.BestEpoch(cfg.objective, output_dir, history)
        log.info("training %d epochs of %d steps (batch %d) on %s", cfg.epochs, steps, cfg.batch_size, dataset.source)
        first_step_at = time.perf_counter()
        untrained = {}
        if cfg.epochs == 0:  # the untrained nets are still scored, at step 0
            untrained = score(trainer, 0)
            run.log_metrics(untrained, step=0)

        for epoch in range(trainer.epochs_done + 1, cfg.epochs + 1):
            record = epochs.train_epoch(trainer, steps, context.progress_bars, output_dir / checkpoint.FOLDER)
            score.sample_grid(trainer, epoch)  # every epoch; the scores only at evaluated ones
            if epochs.is_evaluated(epoch, cfg.eval.every, cfg.epochs):
                record.metrics.update(score(trainer, epoch))
            record.metrics.update(best.update(record, trainer))  # the EMA generator for an EMA objective
            history.append(record)
            checkpoint.write(output_dir, trainer, history, run, threads, cfg)  # before logging: see ganlab.training.epochs
            epochs.log_epoch(run, record, cfg.epochs)
            stop.raise_if_requested()

        outputs.save_outputs(trainer, history, steps, output_dir, run, best_epoch=best.epoch,
                             log_models=cfg.tracking.log_models, register_as=cfg.tracking.register_model)
    if cfg.checkpoint.keep == "none":
        checkpoint.remove(output_dir)
    final = history[-1].summary() if history else untrained
    objective = epochs.objective_value(cfg.objective, cfg.objective_at, final, best)
    outputs.print_summary(history[resume.checkpoint.epoch if resume else 0:], final, objective, cfg.objective,
                          time.perf_counter() - started, first_step_at - started, output_dir, run, picture=score.grid_artifact)
    return objective


def load_data(cfg: JobConfig, run: JobRun, new_run: bool):
    """The checked dataset and the resolved steps per epoch; records both on the run."""
    dataset = load_dataset(cfg.data.name, cfg.data.path, download=cfg.data.download)
    cfg.check_against_data(len(dataset.x_train))
    steps = cfg.steps_for(len(dataset.x_train))
    digest = dataset.sha256()
    recorded = None if new_run else run.tag(tracking.DATA_SHA_TAG)
    if recorded is not None and recorded != digest:  # checked on resume already; the file changed since
        raise InputError(f"resume: data.path={cfg.data.path} now holds data with sha256 {digest}, but run "
                         f"{run.run_id} trained on data with sha256 {recorded}; a resumed run goes on with the same data.")
    run.set_tags({tracking.DATA_SOURCE_TAG: dataset.source, **({} if recorded else {tracking.DATA_SHA_TAG: digest})})
    if new_run:  # a resumed run has these from its start
        run.log_params({"steps_per_epoch": steps})
        run.log_dataset(dataset.name, digest, dataset.location(),  # the UI's Dataset column
                        profile={"train images": len(dataset.x_train), "test images": len(dataset.x_test)})
    if cfg.eval.enabled:  # refuse altered weights or a classifier of another dataset before training
        from ganlab.evaluation import classifier

        run.set_tags({tracking.CLASSIFIER_SHA_TAG: classifier.check(cfg.eval.classifier, dataset.name)[1]})
    return dataset, steps


def warn_about_slow_bf16(dtype: str) -> None:
    from ganlab.core import machine

    if dtype == "bf16" and not machine.has_native_bf16() and not runtime.has_nvidia_gpu():
        log.warning("dtype=bf16 on a CPU without native bfloat16 (%s; ISA flags: %s): TensorFlow emulates bfloat16 "
                    "with float32 instructions here, so this job will be slower than dtype=fp32, not faster.",
                    machine.cpu_model(), " ".join(machine.isa_flags()) or "none")


class StopRequest:
    """The stop signal a job received (`signals_as_interrupt` yields it). The handler raises at once,
    but Python drops an exception raised inside a `__del__` or a weakref callback ("Exception ignored
    in ..."; TensorFlow's variables and tqdm's bars have such methods): so the epoch loop also asks here,
    and a signal that was swallowed still ends the job, at the end of its epoch."""

    def __init__(self):
        self.received: list[str] = []  # the signals' names; "closing" once the run is being closed

    def now_closing(self) -> None:
        self.received.append("closing")

    def raise_if_requested(self) -> None:
        if self.received and self.received[0] != "closing":
            raise KeyboardInterrupt(f"signal {self.received[0]}")


@contextlib.contextmanager
def signals_as_interrupt():
    """While a job runs, SIGTERM (a scheduler's or `kill`'s stop) ends it like Ctrl-C, so its
    run is marked KILLED instead of being left RUNNING. Only the first signal interrupts: one
    that arrives while the run is being closed (SLURM follows a requeue with SIGTERM, an
    impatient user presses Ctrl-C twice) is noted and ignored, so the closing always ends.
    A scheduler's preemption handler, a Python handler already set for SIGUSR1 or SIGUSR2 (submitit's
    on SLURM: it checkpoints, requeues the job and exits), is the job's stop too: it runs once a store
    write in progress has returned, and the SIGTERM that SLURM sends once the job is requeued, often
    while that handler is still at work, is noted and ignored rather than cutting it short.
    It yields the `StopRequest`, which says when the closing has begun. The old handlers return afterwards."""
    stop = StopRequest()

    def first_stop(signum) -> str | None:
        """The signal's name if it is the job's first stop; None (and a warning) if the job is already stopping."""
        name = signal.Signals(signum).name
        if stop.received:
            log.warning("%s while the job is already stopping: ignored, so its run's closing is not cut short", name)
            return None
        stop.received.append(name)
        return name

    def interrupt(signum, frame):
        if name := first_stop(signum):
            interrupts.stop(name)  # at once, or as a store write in progress returns (`ganlab.core.interrupts`)

    def preemption(handler):
        def preempted(signum, frame):
            if name := first_stop(signum):
                def act():
                    handler(signum, frame)  # exits (SystemExit) once it has requeued the job
                    stop.received.remove(name)  # it let the job go on (submitit's, on a task other than the first)

                interrupts.stop(name, act)

        return preempted

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    # A signal the process was told to ignore (SIGINT under nohup or `&`) stays ignored.
    stops = [number for number in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(number) is not signal.SIG_IGN]
    previous = {number: signal.signal(number, interrupt) for number in stops}
    for number in (signal.SIGUSR1, signal.SIGUSR2):
        if callable(handler := signal.getsignal(number)):
            previous[number] = signal.signal(number, preemption(handler))
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


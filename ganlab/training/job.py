"""One training job, top to bottom: check, build, then the epoch loop, then save and report.

`run_job(cfg, context)` is what the Hydra entry point calls; `context` holds the facts
only Hydra knows (output folder, overrides, sweep, launcher threads), so nothing here
imports Hydra. A job is one MLflow run (`ganlab.tracking.job_run.JobRun`), resumable from its last
checkpoint (`ganlab.training.checkpoint`). `train_job` holds the whole loop in one screen: train
an epoch, score it, track the best, checkpoint, log; those steps are small functions in
`ganlab.training.epochs`, the model, loss and optimizer come from their registries by name, and
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
from ganlab.core import config
from ganlab.training import epochs
from ganlab.training import outputs
from ganlab.core import runtime
from ganlab.tracking import store as tracking
from ganlab.core.data import load_dataset
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
    """Open the job's run and train; returns the objective for a sweeper."""
    config.validate_tracking(cfg)  # a store must be usable before a run can record anything
    explicit = context.overrides
    if context.parent_run_id and not cfg.get("resume"):  # a requeued or resumed sweep job continues its own run
        earlier = checkpoint.earlier_attempt(cfg, context.parent_run_id, context.tags.get(tracking.JOB_NUM_TAG),
                                             context.overrides)
        if earlier is not None:
            cfg, explicit = cfg.copy(), []  # its checkpoint holds the config these overrides made
            cfg.resume = earlier
    resume = checkpoint.prepare_resume(cfg, explicit) if cfg.get("resume") else None
    if resume is not None:
        cfg = resume.config
    print(f"ganlab: job outputs in {context.output_dir}", flush=True)
    threads = cfg.threads if cfg.threads is not None else context.threads
    tags = {**context.tags, **runtime_tags(threads)}
    if resume is None:
        tags["output_dir"] = str(context.output_dir)
    else:
        tags.update({"resumed_from_epoch": resume.checkpoint.epoch, "resumed_from": str(resume.checkpoint.folder)})
    run = JobRun(cfg.tracking.uri, cfg.tracking.experiment, context.output_dir, context.run_name, tags,
                 parent_run_id=context.parent_run_id, log_file=context.log_file,
                 resume_run_id=resume.checkpoint.run_id if resume else None,
                 system_metrics=cfg.tracking.system_metrics)
    try:
        with signals_as_interrupt() as now_closing, run:
            try:
                return train_job(cfg, context, run, threads, resume)
            finally:
                now_closing()  # a signal from here on must not cut the run's closing short
    finally:
        if resume is not None:
            resume.lock.release()


def train_job(cfg, context: JobContext, run: JobRun, threads: int | None, resume) -> float | None:
    """Check, build, then the loop: train an epoch, score it, track the best, checkpoint, log. Returns the objective."""
    started = time.perf_counter()
    config.validate(cfg)
    warn_about_slow_bf16(cfg.dtype)
    output_dir = context.output_dir
    with checkpoint.job_lock(output_dir, resume):  # no resume of this job while it runs
        config_file = outputs.save_config(config.resolved(cfg), output_dir)
        if resume is None:  # a resumed run keeps the params it was started with
            run.start(tracking.run_params({**config.resolved(cfg), "threads": threads}), config_file)
            checkpoint.write(output_dir, None, [], run, threads, cfg)  # resumable from here on
        runtime.configure_tensorflow(cfg.seed, threads, cfg.deterministic)  # TensorFlow loads only now
        dataset, steps = load_data(cfg, run, new_run=resume is None)
        trainer = build_trainer(cfg, dataset)
        score = epochs.EpochScoring(build_evaluator(cfg, dataset), evaluation_noises(cfg), run, output_dir, cfg.random_dim,
                                    dataset=dataset, seed=cfg.seed)
        history = checkpoint.resume_into(trainer, resume, run, output_dir, threads) if resume else []
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
            record.metrics.update(best.update(record, trainer.generator))
            history.append(record)
            checkpoint.write(output_dir, trainer, history, run, threads, cfg)  # before logging: see ganlab.training.epochs
            epochs.log_epoch(run, record, cfg.epochs)

        outputs.save_outputs(trainer, history, steps, output_dir, run, register_as=cfg.tracking.register_model,
                             best_epoch=best.epoch)
    if cfg.checkpoint.keep == "none":
        checkpoint.remove(output_dir)
    final = history[-1].summary() if history else untrained
    objective = epochs.objective_value(cfg.objective, cfg.objective_at, final, best)
    outputs.print_summary(history[resume.checkpoint.epoch if resume else 0:], final, objective, cfg.objective,
                          time.perf_counter() - started, first_step_at - started, output_dir, run)
    return objective


def load_data(cfg, run: JobRun, new_run: bool):
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
        from ganlab.evaluation import classifier

        run.set_tags({"eval.classifier_sha256": classifier.check(cfg.eval.classifier, dataset.name)[1]})
    return dataset, steps


def build_trainer(cfg, dataset):
    """G and D, their loss and optimizers, each chosen by name from its registry, and the trainer."""
    from ganlab.gan.trainer import GanTrainer
    from ganlab.gan.losses import build_loss
    from ganlab.gan.models import build_nets
    from ganlab.gan.optimizers import build_optimizers

    loss = build_loss(cfg.loss, cfg.label_smoothing)
    d_optimizer, g_optimizer = build_optimizers(cfg.optimizer)
    generator, discriminator = build_nets(cfg, dataset.x_train.shape[1:])
    return GanTrainer(generator, discriminator, dataset.x_train, loss=loss, d_optimizer=d_optimizer,
                      g_optimizer=g_optimizer, batch_size=cfg.batch_size, seed=cfg.seed, ema=cfg.ema)


def warn_about_slow_bf16(dtype: str) -> None:
    from ganlab.core import machine

    if dtype == "bf16" and not machine.has_native_bf16() and not runtime.has_nvidia_gpu():
        log.warning("dtype=bf16 on a CPU without native bfloat16 (%s; ISA flags: %s): TensorFlow emulates bfloat16 "
                    "with float32 instructions here, so this job will be slower than dtype=fp32, not faster.",
                    machine.cpu_model(), " ".join(machine.isa_flags()) or "none")


def build_evaluator(cfg, dataset):
    """The scoring evaluator (None when evaluation is off). Built after G and D, so their
    initial weights never depend on whether evaluation is on."""
    if not cfg.eval.enabled:
        return None
    from ganlab.evaluation import classifier
    from ganlab.evaluation.evaluator import Evaluator

    return Evaluator.from_dataset(dataset, classifier=classifier.load(cfg.eval.classifier, dataset=dataset.name))


def evaluation_noises(cfg):
    """The noise draws (`eval.repeats` of them) every evaluation of this job scores G on (None when evaluation is off)."""
    if not cfg.eval.enabled:
        return None
    from ganlab.evaluation import evaluator as evaluation

    return evaluation.evaluation_noises(cfg.seed, cfg.eval.num_samples, cfg.random_dim, cfg.eval.get("repeats", 1))


def runtime_tags(threads: int | None) -> dict:
    from ganlab.core import machine

    return {f"machine.{key}": value for key, value in machine.describe(threads).items()}


@contextlib.contextmanager
def signals_as_interrupt():
    """While a job runs, SIGTERM (a scheduler's or `kill`'s stop) ends it like Ctrl-C, so its
    run is marked KILLED instead of being left RUNNING. Only the first signal interrupts: one
    that arrives while the run is being closed (SLURM follows a requeue with SIGTERM, an
    impatient user presses Ctrl-C twice) is noted and ignored, so the closing always ends.
    It yields the function that says the closing has begun. The old handlers return afterwards."""
    stopping = []

    def interrupt(signum, frame):
        name = signal.Signals(signum).name
        if stopping:
            log.warning("%s while the run is being closed: ignored until it is closed", name)
            return
        stopping.append(name)
        raise KeyboardInterrupt(f"signal {name}")

    def now_closing():
        stopping.append("closing")

    if threading.current_thread() is not threading.main_thread():
        yield now_closing
        return
    # A signal the process was told to ignore (SIGINT under nohup or `&`) stays ignored.
    stops = [number for number in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(number) is not signal.SIG_IGN]
    previous = {number: signal.signal(number, interrupt) for number in stops}
    try:
        yield now_closing
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


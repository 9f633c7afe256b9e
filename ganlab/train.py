"""Hydra entry point: compose the config, train the GAN, evaluate it, track it in MLflow.

    python -m ganlab.train epochs=5 dropout=0.1 data.path=../shared/data/mnist.npz
    python -m ganlab.train -m dropout=0.1,0.3          # a sweep: one MLflow run per job

One job is: open an MLflow run, check the config and the data, build G and D, train
with an evaluation every `eval.every` epochs, save models and pictures into the job's
output folder and the run, and return the final value of `objective` for sweepers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the logs

import hydra  # noqa: E402
import numpy as np  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from ganlab import checkpoint, config, plots, sweep, tracking  # noqa: E402
from ganlab.data import load_dataset  # noqa: E402
from ganlab.errors import InputError  # noqa: E402

log = logging.getLogger("ganlab.train")

SAMPLE_NOISE_SEED = 1234  # one fixed noise batch for every epoch and every job, so grids compare
SAMPLE_GRID_SIZE = 100  # a 10x10 grid
# What a resumed job may change: where things are and how many threads; not what is trained.
RESUME_OVERRIDES = ("resume", "data.path", "tracking.uri", "tracking.experiment", "threads")


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    print(f"ganlab: job outputs in {output_dir}", flush=True)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    resume_from = None
    if cfg.get("resume"):
        resume_from, cfg = prepare_resume(cfg, hydra_cfg.overrides.task)
    job_tags = {"hydra.overrides": " ".join(hydra_cfg.overrides.task), "output_dir": str(output_dir)}
    parent_run_id = None
    if in_sweep:
        parent_run_id = sweep.parent_run_id(Path(hydra_cfg.sweep.dir))
        job_tags.update({"sweep.id": parent_run_id or hydra_cfg.sweep.dir, "sweep.job_num": hydra_cfg.job.num})
    if resume_from is not None:
        job_tags.update({"resumed_from_epoch": resume_from.epoch, "resumed_from": str(resume_from.folder)})
    run = tracking.JobRun(
        cfg,
        output_dir,
        run_name=tracking.run_name_from_overrides(hydra_cfg.overrides.task),
        tags=job_tags,
        parent_run_id=parent_run_id,
        log_file=output_dir / f"{hydra_cfg.job.name}.log",
        resume_run_id=resume_from.run_id if resume_from else None,
    )
    try:
        with sigterm_as_interrupt(), run:
            return train_job(cfg, output_dir, run, resume_from)
    except Exception:
        if in_sweep and run.run_id is not None:
            return math.nan  # recorded as FAILED on its run; the sweep goes on and reports it at the end
        raise


def prepare_resume(cfg: DictConfig, overrides) -> tuple[checkpoint.Checkpoint, DictConfig]:
    """Find the checkpoint that `resume` (a run id or a folder) names; the job's config becomes
    the checkpoint's, with only the RESUME_OVERRIDES taken from this command line."""
    target = str(cfg.resume)
    if Path(target).exists():
        found = checkpoint.find(Path(target))
    else:
        run = tracking.find_run(cfg.tracking.uri, cfg.tracking.experiment, target)
        if "output_dir" not in run.data.tags:
            raise InputError(f"resume: run {target} records no output folder, so its checkpoint cannot be found.")
        found = checkpoint.find(Path(run.data.tags["output_dir"]))
    changed = [item for item in overrides if item.split("=")[0].lstrip("+~") not in RESUME_OVERRIDES]
    if changed:
        raise InputError(
            f"resume: a resumed job trains with its checkpoint's config; these overrides would change it: "
            f"{' '.join(changed)}. Only {', '.join(RESUME_OVERRIDES)} may be given with resume."
        )
    resumed = found.config.copy()
    for key in RESUME_OVERRIDES:
        OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    return found, resumed


def train_job(cfg: DictConfig, output_dir: Path, run: tracking.JobRun, resume_from=None) -> float | None:
    """Check, build, train, evaluate and save one job; returns the final objective."""
    started = time.perf_counter()
    config.validate(cfg)
    dataset = load_dataset(cfg.data.name, cfg.data.path)
    config.validate_against_data(cfg, len(dataset.x_train))
    steps = config.steps_per_epoch(cfg, len(dataset.x_train))
    run.set_tags({"data.source": dataset.source, "data.sha256": dataset.sha256()})
    run.log_params({"steps_per_epoch_resolved": steps})

    configure_tensorflow(cfg.seed, threads_for_job(cfg.threads), cfg.deterministic)
    from ganlab.gan import GanTrainer, TrainingDiverged  # TensorFlow loads once the input is good
    from ganlab.models import build_discriminator, build_generator

    trainer = GanTrainer(
        build_generator(cfg.model),
        build_discriminator(cfg.model),
        dataset.x_train,
        batch_size=cfg.batch_size,
        label_smoothing=cfg.label_smoothing,
        learning_rate=cfg.optimizer.lr,
        beta_1=cfg.optimizer.beta_1,
        seed=cfg.seed,
    )
    evaluator, eval_noise = None, None
    if cfg.eval.enabled:
        from ganlab import classifier
        from ganlab.evaluation import Evaluator, evaluation_noise

        evaluator = Evaluator.from_dataset(dataset, classifier=classifier.load(cfg.eval.classifier))
        eval_noise = evaluation_noise(cfg.seed, cfg.eval.num_samples, cfg.model.random_dim)
    history: list = []  # every epoch's record, the resumed ones first
    if resume_from is not None:
        history = restore(trainer, resume_from, run)
        save_checkpoint(trainer, history, cfg, output_dir, run)  # this job's folder holds one from the start
    sample_noise = fixed_noise(SAMPLE_GRID_SIZE, cfg.model.random_dim)
    log.info("training %d epochs of %d steps (batch %d) on %s", cfg.epochs, steps, cfg.batch_size, dataset.source)
    first_step_at = time.perf_counter()

    def end_of_epoch(record) -> None:
        if record.epoch % cfg.eval.every == 0 or record.epoch == cfg.epochs:
            record.metrics.update(evaluate_epoch(trainer, evaluator, record.epoch, sample_noise, eval_noise, output_dir, run))
        history.append(record)
        # Checkpoint before logging: a kill in between is mended on resume, which logs
        # the checkpoint's epochs that the run lacks.
        save_checkpoint(trainer, history, cfg, output_dir, run)
        run.log_metrics(record.summary(), step=record.epoch)
        log.info("epoch %d: %s", record.epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.summary().items()))

    final: dict[str, float] = {}
    if cfg.epochs == 0:  # nothing to train: the untrained nets are still scored and saved
        final = evaluate_epoch(trainer, evaluator, 0, sample_noise, eval_noise, output_dir, run)
        run.log_metrics(final, step=0)
    try:
        trainer.train(cfg.epochs - trainer.epochs_done, steps, on_epoch_end=end_of_epoch)
    except TrainingDiverged as error:
        kept = f"the last good checkpoint (epoch {trainer.epochs_done}) is in {output_dir / checkpoint.FOLDER}"
        raise TrainingDiverged(f"{error}; {kept if trainer.epochs_done else 'no epoch completed'}") from None
    trained = history[resume_from.epoch if resume_from else 0 :]  # the epochs this job ran
    save_outputs(trainer, history, steps, output_dir, run)
    if history:
        final = history[-1].summary()

    objective = final.get(cfg.objective) if cfg.objective else None
    trained_steps = len(trained) * steps
    train_seconds = sum(record.seconds for record in trained)
    print(
        f"ganlab: {len(trained)} epochs, {trained_steps} steps in {train_seconds:.1f} s "
        f"({trained_steps / train_seconds if train_seconds else 0:.1f} steps/s); "
        + ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k != "steps_per_sec")
        + f"; objective {cfg.objective} = {objective}"
        + f"; total {time.perf_counter() - started:.1f} s (first step after {first_step_at - started:.1f} s); "
        + f"outputs in {output_dir}",
        flush=True,
    )
    return objective


def restore(trainer, found: checkpoint.Checkpoint, run: tracking.JobRun) -> list:
    """Put the checkpoint's state into `trainer`; log the epochs the run lacks; return the records."""
    from ganlab.gan import EpochRecord

    values, saved_records = checkpoint.load_state(found)
    try:
        trainer.set_state(values, epochs_done=found.epoch)
    except ValueError as error:
        raise InputError(f"resume: {error}; was the checkpoint {str(found.folder)!r} written by another model config?") from error
    history = [EpochRecord.from_dict(values) for values in saved_records]
    logged = run.logged_steps("d_loss")
    for record in history:
        if record.epoch not in logged:
            run.log_metrics(record.summary(), step=record.epoch)
    log.info("resumed from %s after epoch %d", found.folder, found.epoch)
    return history


def save_checkpoint(trainer, history: list, cfg: DictConfig, output_dir: Path, run: tracking.JobRun) -> None:
    meta = {
        "epoch": trainer.epochs_done, "run_id": run.run_id,
        "tracking_uri": tracking.resolve_uri(cfg.tracking.uri), "experiment": cfg.tracking.experiment,
    }
    config_values = tracking.resolved_config(cfg)
    checkpoint.save(output_dir / checkpoint.FOLDER, trainer.get_state(), [r.to_dict() for r in history], config_values, meta)


@contextlib.contextmanager
def sigterm_as_interrupt():
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


def configure_tensorflow(seed: int, threads: int | None, deterministic: bool) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; set thread count and op determinism."""
    import keras
    import tensorflow as tf

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # a later job in the same process: TensorFlow is already running
            current = tf.config.threading.get_intra_op_parallelism_threads()
            if current != threads:
                log.warning("threads=%d not applied: TensorFlow already runs with %d", threads, current)
    keras.backend.clear_session()  # a fresh graph and layer names for every job of a process
    random.seed(seed)
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow global seeds
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def threads_for_job(threads: int | None) -> int | None:
    """`threads`, or when null: the job's cores under submitit, cores / n_jobs under the
    parallel launcher, else all cores."""
    if threads is not None:
        return threads
    launcher = HydraConfig.get().launcher
    if launcher.get("cpus_per_task"):  # submitit (local or SLURM): the cores the job was given
        return int(launcher.cpus_per_task)
    parallel_jobs = launcher.get("n_jobs")
    if not parallel_jobs:
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // parallel_jobs) if parallel_jobs > 0 else 1


def fixed_noise(count: int, random_dim: int) -> np.ndarray:
    """The same noise batch for every run with this random_dim (independent of `seed`)."""
    return np.random.default_rng(SAMPLE_NOISE_SEED).standard_normal((count, random_dim), dtype=np.float32)


def evaluate_epoch(trainer, evaluator, epoch, sample_noise, eval_noise, output_dir, run) -> dict[str, float]:
    """Sample grid for this epoch, and the classifier scores when evaluation is on."""
    grid = plots.save_sample_grid(trainer.generate(sample_noise), output_dir / "samples" / f"epoch_{epoch:03d}.png", title=f"epoch {epoch}")
    run.log_artifact(grid, "samples")
    if evaluator is None:
        return {}
    started = time.perf_counter()
    result = evaluator.evaluate(trainer.generate(eval_noise))
    histogram = plots.save_class_histogram(result.histogram, output_dir / "classes" / f"epoch_{epoch:03d}.png", title=f"epoch {epoch}")
    run.log_artifact(histogram, "classes")
    log.info("evaluation of epoch %d took %.1f s", epoch, time.perf_counter() - started)
    return result.scores


def save_outputs(trainer, records: list, steps: int, output_dir: Path, run: tracking.JobRun) -> None:
    """Generator and discriminator as .keras files, the final grid and the loss curve."""
    models_dir = output_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    trainer.generator.save(models_dir / "generator.keras")
    trainer.discriminator.save(models_dir / "discriminator.keras")
    run.log_artifact(models_dir / "generator.keras", "models")
    epoch = records[-1].epoch if records else 0
    final_grid = plots.save_sample_grid(trainer.generate(fixed_noise(SAMPLE_GRID_SIZE, trainer.random_dim)), output_dir / "samples.png", title=f"epoch {epoch}")
    run.log_artifact(final_grid)
    if records:
        d_losses = np.concatenate([record.d_losses for record in records])
        g_losses = np.concatenate([record.g_losses for record in records])
        run.log_artifact(plots.save_loss_curve(d_losses, g_losses, steps, output_dir / "loss_curve.png"))
        epochs = np.concatenate([np.full(len(record.d_losses), record.epoch) for record in records])
        per_step = np.column_stack([epochs, np.arange(1, len(d_losses) + 1), d_losses, g_losses])
        np.savetxt(output_dir / "losses.csv", per_step, fmt=["%d", "%d", "%.9g", "%.9g"], delimiter=",",
                   header="epoch,step,d_loss,g_loss", comments="")
        run.log_artifact(output_dir / "losses.csv")


if __name__ == "__main__":
    main()

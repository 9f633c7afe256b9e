"""What a job leaves behind: its config, models, pictures, per-step losses, and the closing lines.

Everything is written into the job's output folder and logged into its MLflow run. The
final generator (and the best epoch's) is also logged as an MLflow Model, which
`mlflow.pyfunc.load_model` turns back into a noise -> images function (unless
`tracking.log_models=false`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ganlab.core import plots
from ganlab.core import runtime
from ganlab.core import scores
from ganlab.tracking import store as tracking

SAMPLE_NOISE_SEED = 1234  # one fixed noise batch for every epoch and every job, so grids compare
SAMPLE_GRID_SIZE = 100  # a 10x10 grid
BEST_GENERATOR = Path("models") / "generator_best.keras"


def fixed_noise(random_dim: int, count: int = SAMPLE_GRID_SIZE) -> np.ndarray:
    """The noise of every sample grid: the same for every run with this random_dim (independent of `seed`)."""
    return np.random.default_rng(SAMPLE_NOISE_SEED).standard_normal((count, random_dim), dtype=np.float32)

def save_config(config: dict, output_dir: Path) -> Path:
    """The resolved config as `config.yaml` in the output folder."""
    path = Path(output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), path)
    return path


def save_outputs(trainer, records: list, steps: int, output_dir: Path, run, best_epoch: int | None = None,
                 log_models: bool = True, register_as: str | None = None) -> None:
    """G and D (and G's EMA and best-epoch versions) as .keras files, the final grid, the
    loss curve and the per-step losses, in the folder and in the run; with `log_models`, G as the
    MLflow Model `generator` (registered as `register_as` when given) and the best epoch's G as `generator_best`."""
    models_dir = Path(output_dir) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    trainer.generator.save(models_dir / "generator.keras")
    trainer.discriminator.save(models_dir / "discriminator.keras")
    saved = [models_dir / "generator.keras", models_dir / "discriminator.keras"]
    if trainer.ema is not None:
        with trainer.ema_weights():
            trainer.generator.save(models_dir / "generator_ema.keras")
        saved.append(models_dir / "generator_ema.keras")
    if (Path(output_dir) / BEST_GENERATOR).is_file():
        saved.append(Path(output_dir) / BEST_GENERATOR)
    for path in saved:
        run.log_artifact(path, "models")
    if log_models:  # tracking.log_models
        log_generators(trainer, output_dir, run, register_as, best_epoch)
    # Titled with the run and its epoch: the file is also read on its own, outside MLflow.
    final_grid = plots.save_sample_grid(trainer.generate(fixed_noise(trainer.random_dim)), Path(output_dir) / "samples.png",
                                        title=f"{run.run_name}: epoch {trainer.epochs_done}")
    run.log_artifact(final_grid)
    if records:
        d_losses = np.concatenate([record.d_losses for record in records])
        g_losses = np.concatenate([record.g_losses for record in records])
        run.log_artifact(plots.save_loss_curve(d_losses, g_losses, steps, Path(output_dir) / "loss_curve.png",
                                               title=f"{run.run_name}: losses"))
        epochs = np.concatenate([np.full(len(record.d_losses), record.epoch) for record in records])
        per_step = np.column_stack([epochs, np.arange(1, len(d_losses) + 1), d_losses, g_losses])
        np.savetxt(Path(output_dir) / "losses.csv", per_step, fmt=["%d", "%d", "%.9g", "%.9g"], delimiter=",",
                   header="epoch,step,d_loss,g_loss", comments="")
        run.log_artifact(Path(output_dir) / "losses.csv")


def log_generators(trainer, output_dir: Path, run, register_as: str | None, best_epoch: int | None) -> None:
    """G as MLflow Models: noise (N, random_dim) float32 in, images (N, *image_shape) float32 in [-1, 1] out.
    Logging predicts on the input example (for the signature, and MLflow to check it), with op determinism
    suspended: no number depends on it, and under it TensorFlow logs a spurious E0000 error line."""
    example = fixed_noise(trainer.random_dim, count=2)
    with runtime.op_determinism_suspended():
        run.log_model(trainer.generator, "generator", example, step=trainer.epochs_done, register_as=register_as)
        if (Path(output_dir) / BEST_GENERATOR).is_file():
            import keras

            best = keras.models.load_model(Path(output_dir) / BEST_GENERATOR)
            run.log_model(best, "generator_best", example, step=best_epoch or trainer.epochs_done)


def print_summary(trained: list, final: dict[str, float], objective: float | None, objective_name: str | None,
                  total_seconds: float, startup_seconds: float, output_dir: Path, run, picture: str | None = None) -> None:
    """The job's closing block: what ran (`trained`: this process's epoch records), how fast,
    the main scores (`final`), and how to look at it (the URL opens `picture`, an artifact path, when given)."""
    steps = sum(len(record.d_losses) for record in trained)
    seconds = sum(record.seconds for record in trained)
    shown = ", ".join(f"{name} {scores.format_value(name, final[name])}" for name in scores.HEADLINE if name in final)
    lines = [
        f"ganlab: trained {len(trained)} epoch{'s' if len(trained) != 1 else ''} ({steps} steps) in {seconds:.1f} s"
        f" ({steps / seconds if seconds else 0:.1f} steps/s); total {total_seconds:.1f} s, first step after {startup_seconds:.1f} s",
    ]
    if objective_name:
        lines.append(f"  objective {objective_name} = {scores.format_value(objective_name, objective)}")
    if shown:
        lines.append(f"  scores: {shown}")
    lines.append(f"  outputs in {output_dir}")
    lines += ["  " + line for line in tracking.ui_hint(run.uri, run.experiment_id, run.run_id, artifact=picture).splitlines()]
    print("\n".join(lines), flush=True)

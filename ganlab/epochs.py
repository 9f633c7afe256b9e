"""The end of every epoch, in one object: evaluate, track the best epoch, checkpoint, log.

`EpochEnd` is the callback `GanTrainer.train` calls with each `EpochRecord`. At an
evaluated epoch (every `eval.every`, and the last) it draws the fixed-noise sample grid,
scores `eval.num_samples` samples with the classifier (and the EMA generator's with an
`ema_` prefix), logs the grid and the class histogram as MLflow images (keys `samples`
and `classes`, step = epoch) beside their PNG files, and keeps the objective's best value so far (`<objective>_best`,
`<objective>_best_epoch`) with the generator that reached it. Then it writes the
checkpoint and only then logs the epoch's metrics: a kill in between is mended on
resume, which logs the checkpoint's epochs that the run lacks.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ganlab import checkpoint, plots, scores
from ganlab.errors import TrainingDiverged

log = logging.getLogger("ganlab.train")

SAMPLE_NOISE_SEED = 1234  # one fixed noise batch for every epoch and every job, so grids compare
SAMPLE_GRID_SIZE = 100  # a 10x10 grid
BEST_GENERATOR = Path("models") / "generator_best.keras"


def fixed_noise(random_dim: int, count: int = SAMPLE_GRID_SIZE) -> np.ndarray:
    """The same noise batch for every run with this random_dim (independent of `seed`)."""
    return np.random.default_rng(SAMPLE_NOISE_SEED).standard_normal((count, random_dim), dtype=np.float32)


class EpochEnd:
    def __init__(self, cfg, output_dir: Path, run, trainer, evaluator, threads: int | None):
        from ganlab.evaluation import evaluation_noise

        self.cfg, self.output_dir, self.run, self.trainer, self.evaluator = cfg, Path(output_dir), run, trainer, evaluator
        self.threads = threads
        self.objective = cfg.objective
        self.history: list = []  # every epoch's record, the resumed ones first
        self.untrained: dict[str, float] = {}  # scores of the untrained nets (epochs=0)
        self.sample_noise = fixed_noise(cfg.random_dim)
        self.eval_noise = evaluation_noise(cfg.seed, cfg.eval.num_samples, cfg.random_dim) if evaluator else None

    # ------------------------------------------------------------------ checkpoint and resume

    def save_checkpoint(self) -> None:
        from ganlab.job import resolved

        meta = checkpoint.meta(self.trainer.epochs_done, self.run, self.threads, resolved(self.cfg))
        checkpoint.save(self.output_dir / checkpoint.FOLDER, self.trainer.get_state(), [r.to_dict() for r in self.history], meta)

    def resume_from(self, resume) -> None:
        self.history = checkpoint.restore(self.trainer, resume, self.run)
        earlier_best = resume.checkpoint.folder.parent / BEST_GENERATOR
        if earlier_best.is_file():
            (self.output_dir / BEST_GENERATOR).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(earlier_best, self.output_dir / BEST_GENERATOR)

    # ------------------------------------------------------------------ training

    def train(self, epochs: int, steps: int, progress_bars: bool) -> None:
        try:
            self.trainer.train(epochs, steps, on_epoch_end=self, progress=progress_bars)
        except TrainingDiverged as error:
            done = self.trainer.epochs_done
            kept = f"the last good checkpoint (epoch {done}) is in {self.output_dir / checkpoint.FOLDER}"
            raise TrainingDiverged(f"{error}; {kept if done else 'no epoch completed'}") from None

    def __call__(self, record) -> None:
        if record.epoch % self.cfg.eval.every == 0 or record.epoch == self.cfg.epochs:
            record.metrics.update(self.evaluate(record.epoch))
        record.metrics.update(self.track_best(record))
        self.history.append(record)
        self.save_checkpoint()  # before logging: a kill in between is mended on resume
        summary = record.summary()
        self.run.log_metrics(summary, step=record.epoch)
        shown = ", ".join(f"{name} {scores.format_value(name, summary[name])}" for name in summary if scores.lookup(name))
        log.info("epoch %d/%d [%s]: %s", record.epoch, self.cfg.epochs, self.run.run_name, shown)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Sample grid for this epoch, and the classifier scores when evaluation is on."""
        grid = self.trainer.generate(self.sample_noise)
        picture = plots.save_sample_grid(grid, self.output_dir / "samples" / f"epoch_{epoch:03d}.png", title=f"epoch {epoch}")
        self.run.log_artifact(picture, "samples")
        self.run.log_image(plots.image_grid(grid), key="samples", step=epoch)
        if self.evaluator is None:
            return {}
        started = time.perf_counter()
        result = self.evaluator.evaluate(self.trainer.generate(self.eval_noise))
        histogram = plots.save_class_histogram(result.histogram, self.output_dir / "classes" / f"epoch_{epoch:03d}.png", title=f"epoch {epoch}")
        self.run.log_artifact(histogram, "classes")
        self.run.log_image(histogram, key="classes", step=epoch)
        found = dict(result.scores)
        if self.trainer.ema is not None:
            ema_result = self.evaluator.evaluate(self.trainer.generate(self.eval_noise, ema=True))
            found.update({scores.ema(name): value for name, value in ema_result.scores.items()})
        log.info("evaluation of epoch %d took %.1f s", epoch, time.perf_counter() - started)
        return found

    # ------------------------------------------------------------------ the best epoch

    def best_so_far(self) -> tuple[float | None, int | None]:
        if not self.objective:
            return None, None
        for record in reversed(self.history):
            if scores.best(self.objective) in record.metrics:
                return record.metrics[scores.best(self.objective)], int(record.metrics[scores.best_epoch(self.objective)])
        return None, None

    def track_best(self, record) -> dict[str, float]:
        """`<objective>_best` and its epoch at epochs that measure the objective; saves the best generator."""
        value = record.summary().get(self.objective) if self.objective else None
        if value is None:
            return {}
        best, best_epoch = self.best_so_far()
        if scores.is_better(self.objective, value, best):
            best, best_epoch = value, record.epoch
            path = self.output_dir / BEST_GENERATOR
            path.parent.mkdir(parents=True, exist_ok=True)
            self.trainer.generator.save(path)
        return {scores.best(self.objective): best, scores.best_epoch(self.objective): best_epoch}

    def score_untrained(self) -> None:
        """epochs=0: the untrained nets are still scored, at step 0."""
        self.untrained = self.evaluate(0)
        self.run.log_metrics(self.untrained, step=0)

    def final_metrics(self) -> dict[str, float]:
        return self.history[-1].summary() if self.history else self.untrained

    def objective_value(self) -> float | None:
        if not self.objective:
            return None
        if self.cfg.objective_at == "best" and self.history:
            return self.best_so_far()[0]
        return self.final_metrics().get(self.objective)

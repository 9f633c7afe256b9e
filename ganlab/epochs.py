"""The steps at the end of an epoch, each a small function the job's loop calls in turn.

- `train_epoch`: one epoch of the trainer, with the checkpoint's place in a divergence message;
- `EpochScoring`: at an evaluated epoch (`is_evaluated`), the fixed-noise sample grid and
  the classifier's scores of `eval.num_samples` images (and the EMA generator's, prefixed
  `ema_`), each picture logged as an MLflow image (keys `samples`, `classes`; step = epoch);
- `BestEpoch`: the objective's best value so far (`<objective>_best`, `<objective>_best_epoch`)
  and the generator that reached it;
- `log_epoch`: the epoch's metrics into the run and one console line.
The job (`ganlab.job.train_job`) writes the checkpoint between the last two, so a kill
in between is mended on resume (which logs the checkpoint's epochs that the run lacks).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ganlab import outputs, plots, scores
from ganlab.config import OBJECTIVE_AT_BEST
from ganlab.errors import TrainingDiverged

log = logging.getLogger("ganlab.train")


def train_epoch(trainer, steps: int, progress_bars: bool, checkpoint_folder: Path):
    """One epoch's `EpochRecord`; a divergence says where the last good checkpoint is."""
    try:
        return trainer.train_epoch(steps, progress=progress_bars)
    except TrainingDiverged as error:
        done = trainer.epochs_done
        kept = f"the last good checkpoint (epoch {done}) is in {checkpoint_folder}"
        raise TrainingDiverged(f"{error}; {kept if done else 'no epoch completed'}") from None


def is_evaluated(epoch: int, every: int, last_epoch: int) -> bool:
    return epoch % every == 0 or epoch == last_epoch


class EpochScoring:
    """The pictures and scores of the generator at an evaluated epoch (the evaluator is None
    when evaluation is off: then only the sample grid)."""

    def __init__(self, evaluator, eval_noise, run, output_dir: Path, random_dim: int):
        self.evaluator, self.eval_noise, self.run = evaluator, eval_noise, run
        self.output_dir = Path(output_dir)
        self.sample_noise = outputs.fixed_noise(random_dim)

    def __call__(self, trainer, epoch: int) -> dict[str, float]:
        grid = trainer.generate(self.sample_noise)
        picture = plots.save_sample_grid(grid, self.output_dir / "samples" / f"epoch_{epoch:03d}.png", title=f"epoch {epoch}")
        self.run.log_artifact(picture, "samples")
        self.run.log_image(plots.image_grid(grid), key="samples", step=epoch)
        if self.evaluator is None:
            return {}
        started = time.perf_counter()
        result = self.evaluator.evaluate(trainer.generate(self.eval_noise))
        histogram = plots.save_class_histogram(result.histogram, self.output_dir / "classes" / f"epoch_{epoch:03d}.png",
                                               title=f"epoch {epoch}")
        self.run.log_artifact(histogram, "classes")
        self.run.log_image(histogram, key="classes", step=epoch)
        found = dict(result.scores)
        if trainer.ema is not None:
            ema_result = self.evaluator.evaluate(trainer.generate(self.eval_noise, ema=True))
            found.update({scores.ema(name): value for name, value in ema_result.scores.items()})
        log.info("evaluation of epoch %d took %.1f s", epoch, time.perf_counter() - started)
        return found


class BestEpoch:
    """The objective's best value so far, its epoch, and the generator that reached it
    (saved as `outputs.BEST_GENERATOR`). Knows nothing of training."""

    def __init__(self, objective: str | None, output_dir: Path, history: list):
        self.objective = objective
        self.path = Path(output_dir) / outputs.BEST_GENERATOR
        self.value, self.epoch = None, None
        for record in history:  # a resumed job picks up the best of its earlier epochs
            if objective and scores.best(objective) in record.metrics:
                self.value = record.metrics[scores.best(objective)]
                self.epoch = int(record.metrics[scores.best_epoch(objective)])

    def update(self, record, generator) -> dict[str, float]:
        """`<objective>_best` and its epoch at epochs that measure the objective."""
        value = record.summary().get(self.objective) if self.objective else None
        if value is None:
            return {}
        if scores.is_better(self.objective, value, self.value):
            self.value, self.epoch = value, record.epoch
            self.path.parent.mkdir(parents=True, exist_ok=True)
            generator.save(self.path)
        return {scores.best(self.objective): self.value, scores.best_epoch(self.objective): self.epoch}


def log_epoch(run, record, last_epoch: int) -> None:
    summary = record.summary()
    run.log_metrics(summary, step=record.epoch)
    shown = ", ".join(f"{name} {scores.format_value(name, summary[name])}" for name in summary if scores.lookup(name))
    log.info("epoch %d/%d [%s]: %s", record.epoch, last_epoch, run.run_name, shown)


def objective_value(objective: str | None, objective_at: str, final: dict[str, float], best: BestEpoch) -> float | None:
    """What the job returns to a sweeper: the objective after the last epoch, or its best value."""
    if not objective:
        return None
    if objective_at == OBJECTIVE_AT_BEST and best.value is not None:
        return best.value
    return final.get(objective)

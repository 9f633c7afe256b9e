"""The steps at the end of an epoch, each a small function the job's loop calls in turn.

- `train_epoch`: one epoch of the trainer, with the checkpoint's place in a divergence message;
- `EpochScoring.sample_grid`: at every epoch, the fixed-noise sample grid (cheap: one batch
  through G), a PNG in `samples/` and the MLflow image `samples`;
- `EpochScoring` (called): at an evaluated epoch (`is_evaluated`), the classifier's scores of
  `eval.num_samples` images (and the EMA generator's, prefixed `ema_`), its pictures logged
  as MLflow images (keys `classes`, `nearest_training`); with `eval.repeats` R > 1 each score
  is the mean over R noise draws and `fid_sampling_std` their spread; the per-class FID
  table (`fid_per_class/epoch_NNN.csv`); and D's mean output on training and held-out test
  images in inference mode (`d_real_train`, `d_real_test`, `d_gap`);
- `log_image_and_latest`: every MLflow image at step = epoch and again at `LATEST_STEP`, the
  step MLflow's image card opens on, so the card shows the newest picture without a click;
- `BestEpoch`: the objective's best value so far (`<objective>_best`, `<objective>_best_epoch`)
  and the generator that reached it;
- `log_epoch`: the epoch's metrics into the run (and its per-step losses, `log_step_losses`) and one console line.
The job (`ganlab.training.job.train_job`) writes the checkpoint between the last two, so a kill
in between is mended on resume (which logs the checkpoint's epochs that the run lacks).
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np

from ganlab.evaluation import metrics
from ganlab.training import outputs
from ganlab.core import plots
from ganlab.core import scores
from ganlab.core.config import OBJECTIVE_AT_BEST
from ganlab.core.data import to_unit_range
from ganlab.core.errors import TrainingDiverged

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


D_GAP_SAMPLES = 2000  # training and test images D is measured on, as many of each (capped at the test set)
NEAREST_KEY = "nearest_training"  # the MLflow image key and folder of the memorization picture
CLASS_FID_DIR = "fid_per_class"  # the per-class FID tables, one CSV per evaluated epoch
SAMPLES_KEY = "samples"  # the MLflow image key (and folder) of the fixed-noise sample grid
# MLflow's image card (3.x: the run page's Model metrics tab, the chart view, full screen) starts
# at step 0 unless the key has a single step (a new card's config says step=0; the card snaps to
# the only step there is, and a snapped step is kept in the page's saved state). So every image
# is logged at its epoch and again here; the card shows the latest of the step's images, so step 0
# is always the newest picture, and steps 1.. are the epochs. (Epoch 0, an untrained job, is both.)
LATEST_STEP = 0


def log_image_and_latest(run, image, key: str, epoch: int) -> None:
    """`image` under `key` at step `epoch` and, as the newest picture, at `LATEST_STEP`."""
    run.log_image(image, key=key, step=epoch)
    if epoch != LATEST_STEP:
        run.log_image(image, key=key, step=LATEST_STEP)


class EpochScoring:
    """The generator's sample grid at every epoch (`sample_grid`) and its pictures and scores at
    an evaluated epoch (calling it; the evaluator is None when evaluation is off: then only the grid).

    eval_noise: one noise array, or a list of `eval.repeats` of them (`evaluation.evaluation_noises`);
    each score is the mean over the draws, `fid_sampling_std` their spread (with two or more).
    dataset: its training and test images measure D's overfitting (`d_real_train`, `d_real_test`,
    `d_gap`); None leaves those out."""

    def __init__(self, evaluator, eval_noise, run, output_dir: Path, random_dim: int, dataset=None, seed: int = 0):
        self.evaluator, self.run = evaluator, run
        self.eval_noises = list(eval_noise) if isinstance(eval_noise, (list, tuple)) else [eval_noise]
        self.eval_noise = self.eval_noises[0]
        self.output_dir = Path(output_dir)
        self.sample_noise = outputs.fixed_noise(random_dim)
        self.d_images = None if dataset is None else d_gap_images(dataset.x_train, dataset.x_test, seed)
        self.grid_epoch = None  # the epoch of the last sample grid, so an evaluated epoch makes it once
        self.grid_artifact = None  # the newest grid's artifact path (`samples/epoch_NNN.png`): the printed URL opens it
        self.setting = getattr(run, "run_name", None)  # every picture names the run's setting and its epoch
        if evaluator is not None:
            run.set_tags({**evaluator.scoring_tags(), "eval.repeats": str(len(self.eval_noises))})

    def scores_of(self, trainer, ema: bool = False):
        """The mean scores over the noise draws (the first draw's Evaluation for its pictures and table)."""
        results = [self.evaluator.evaluate(trainer.generate(noise, ema=ema) if ema else trainer.generate(noise))
                   for noise in self.eval_noises]
        return metrics.mean_over_draws(results), results[0]

    def sample_grid(self, trainer, epoch: int) -> Path:
        """The fixed-noise sample grid of `epoch`: `samples/epoch_NNN.png` in the output folder and
        the run's artifacts, and the MLflow image `samples` (step = epoch, and the newest at `LATEST_STEP`)."""
        grid = trainer.generate(self.sample_noise)
        picture = plots.save_sample_grid(grid, self.output_dir / SAMPLES_KEY / f"epoch_{epoch:03d}.png", title=self.title(epoch))
        self.run.log_artifact(picture, SAMPLES_KEY)
        log_image_and_latest(self.run, picture, SAMPLES_KEY, epoch)  # the titled picture: black on white, as every one
        self.grid_epoch, self.grid_artifact = epoch, f"{SAMPLES_KEY}/{picture.name}"
        return picture

    def title(self, epoch: int) -> str:
        """A picture's title: the run's setting and the epoch (`dropout=0.1 ls=0, epoch 3`)."""
        return f"{self.setting}, epoch {epoch}" if self.setting else f"epoch {epoch}"

    def __call__(self, trainer, epoch: int) -> dict[str, float]:
        """The scores of an evaluated epoch (and its sample grid, unless `sample_grid` made it already)."""
        if self.grid_epoch != epoch:
            self.sample_grid(trainer, epoch)
        if self.evaluator is None:
            return {}
        started = time.perf_counter()
        found, result = self.scores_of(trainer)
        histogram = plots.save_class_histogram(result.histogram, self.output_dir / "classes" / f"epoch_{epoch:03d}.png",
                                               title=self.title(epoch))
        self.run.log_artifact(histogram, "classes")
        log_image_and_latest(self.run, histogram, "classes", epoch)
        if result.class_fid is not None:
            table = save_class_fid(result.class_fid, result.class_counts, self.output_dir / CLASS_FID_DIR / f"epoch_{epoch:03d}.csv")
            self.run.log_artifact(table, CLASS_FID_DIR)
        if result.nearest_pairs is not None:
            nearest = plots.save_nearest_pairs(*result.nearest_pairs, self.output_dir / NEAREST_KEY / f"epoch_{epoch:03d}.png",
                                               distances=result.nearest_distances, title=self.title(epoch))
            self.run.log_artifact(nearest, NEAREST_KEY)
            log_image_and_latest(self.run, nearest, NEAREST_KEY, epoch)
        if self.d_images is not None:
            found.update(discriminator_gap(trainer, *self.d_images))
        if trainer.ema is not None:
            ema_found, _ = self.scores_of(trainer, ema=True)
            found.update({scores.ema(name): value for name, value in ema_found.items()})
        log.info("evaluation of epoch %d took %.1f s", epoch, time.perf_counter() - started)
        return found


def d_gap_images(x_train: np.ndarray, x_test: np.ndarray, seed: int, size: int = D_GAP_SAMPLES):
    """Equal-sized uint8 samples of training and test images for `discriminator_gap`: the first
    min(size, test) test images and as many training images drawn without replacement (seeded)."""
    size = min(size, len(x_test), len(x_train))
    chosen = np.sort(np.random.default_rng(seed).choice(len(x_train), size, replace=False))
    return x_train[chosen], x_test[:size]


def discriminator_gap(trainer, train_images: np.ndarray, test_images: np.ndarray, batch_size: int = 2000) -> dict[str, float]:
    """D's mean output (inference mode: no dropout) on training and on held-out test images, and
    their difference: `d_real_train`, `d_real_test`, `d_gap` (a probability with loss=ns, else a raw score)."""
    means = []
    for images in (train_images, test_images):
        scaled = to_unit_range(images).reshape(len(images), *trainer.image_shape)
        d_outputs = [np.asarray(trainer.loss.d_output(trainer.discriminator(scaled[i:i + batch_size], training=False)),
                                np.float64).ravel() for i in range(0, len(scaled), batch_size)]
        means.append(float(np.concatenate(d_outputs).mean()))
    return {scores.D_REAL_TRAIN: means[0], scores.D_REAL_TEST: means[1], scores.D_GAP: means[0] - means[1]}


def save_class_fid(class_fid: np.ndarray, counts: np.ndarray, path: Path) -> Path:
    """The per-class FID table: class, generated images the classifier assigns to it, FID (inf: too few
    generated images of the class, the worst possible; empty: too few real ones to score it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["class", "generated", scores.FID])
        for label, (value, count) in enumerate(zip(class_fid, counts)):
            writer.writerow([label, int(count), "" if np.isnan(value) else repr(float(value))])
    return path


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

    def update(self, record, trainer) -> dict[str, float]:
        """`<objective>_best` and its epoch at epochs that measure the objective. At a new best, saves the
        generator whose score it is: the EMA weights for an EMA objective (`ema_fid`), else the live ones.
        `trainer` is the GanTrainer (a bare generator is taken too, for a live-weights objective)."""
        value = record.summary().get(self.objective) if self.objective else None
        if value is None:
            return {}
        if scores.is_better(self.objective, value, self.value):
            self.value, self.epoch = value, record.epoch
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.objective.startswith(scores.EMA_PREFIX):
                if not hasattr(trainer, "ema_weights"):
                    raise TypeError(f"objective {self.objective} chose the epoch by the EMA's score: pass the trainer, "
                                    "so the EMA generator is the one saved")
                with trainer.ema_weights() as generator:
                    generator.save(self.path)
            else:
                getattr(trainer, "generator", trainer).save(self.path)
        return {scores.best(self.objective): self.value, scores.best_epoch(self.objective): self.epoch}


# The per-step losses' MLflow keys, at the global step (epoch e's step i is (e - 1) * steps + i),
# beside the epoch means (`d_loss`, `g_loss` at step = epoch), so a 1-epoch run has a curve too.
D_LOSS_STEP, G_LOSS_STEP = f"{scores.D_LOSS}_step", f"{scores.G_LOSS}_step"


def log_step_losses(run, record) -> None:
    """The epoch's per-step D and G losses as MLflow metrics `d_loss_step`, `g_loss_step` at their
    global steps, in `log_batch` chunks; G's only at the steps G moved (n_critic > 1: NaN elsewhere)."""
    steps = len(record.d_losses)
    global_steps = (record.epoch - 1) * steps + np.arange(1, steps + 1)
    moved = np.isfinite(record.g_losses)
    run.log_series({D_LOSS_STEP: (global_steps, record.d_losses),
                    G_LOSS_STEP: (global_steps[moved], record.g_losses[moved])})


def log_epoch(run, record, last_epoch: int) -> None:
    summary = record.summary()
    run.log_metrics(summary, step=record.epoch)
    log_step_losses(run, record)
    shown = ", ".join(f"{name} {scores.format_value(name, summary[name])}" for name in summary if scores.lookup(name))
    log.info("epoch %d/%d [%s]: %s", record.epoch, last_epoch, run.run_name, shown)


def objective_value(objective: str | None, objective_at: str, final: dict[str, float], best: BestEpoch) -> float | None:
    """What the job returns to a sweeper: the objective after the last epoch, or its best value."""
    if not objective:
        return None
    if objective_at == OBJECTIVE_AT_BEST and best.value is not None:
        return best.value
    return final.get(objective)

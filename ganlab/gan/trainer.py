"""The GAN training step (one `tf.function`) and the epoch loop around it.

Each step, as in the tutorial:
1. draw `batch_size` real images uniformly with replacement and as many noise vectors;
2. train D on [real, G(noise)] with the loss's D objective (the tutorial's: targets
   [1 - label_smoothing, 0]), dropout active, plus the loss's gradient penalty if it has one;
3. every `n_critic`-th step (every step for the tutorial), train G through a frozen D
   (only G's weights move; D's dropout stays active) on fresh noise with the loss's G objective.

An epoch is `steps_per_epoch` D steps whatever the loss, so every loss sees the same
number of real images per epoch; with `n_critic` > 1 G takes one step in `n_critic` and
the per-step `g_losses` hold NaN at the steps where G did not move.

The training set lives in a tensor and the random draws come from a seeded
`tf.random.Generator`, so a step never leaves TensorFlow. The loop knows nothing of
tracking: it returns an `EpochRecord` per epoch.

With `ema` set, the step also keeps an exponential moving average of G's weights (updated
right after G's step, checkpointed with the rest of the state) for generating and saving
through `ema_weights()`; it never changes what is trained, and without `ema` the step is
exactly the plain one above. With `ema_warmup` (on in the job whenever `ema` is set) the
average's half-life grows with training, as Karras et al. 2020 (StyleGAN2-ADA, `ema_rampup`;
also StudioGAN's `ema_rampup`) ramp it: at G step t the decay is 0.5 ** (1 / min(H, EMA_RAMPUP * t)),
H = ln 0.5 / ln(ema) the half-life of `ema` in G steps. Early on the average follows the live
weights instead of holding on to the random start (with ema=0.999, 63% of the average would
still be the initial weights after one 469-step epoch); once EMA_RAMPUP * t reaches H, the
decay is `ema` itself.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ganlab.core import scores
from ganlab.core.data import unit_scaled
from ganlab.core.errors import TrainingDiverged
from ganlab.gan.losses import GanLoss, gradient_penalty

EMA_RAMPUP = 0.05  # Karras et al. 2020's ema_rampup: the EMA's half-life is at most this share of the G steps so far


@dataclass
class EpochRecord:
    """What one epoch produced: per-step losses and the epoch means."""

    epoch: int  # 1-based
    d_losses: np.ndarray  # per step
    g_losses: np.ndarray  # per step; NaN at steps where G did not move (n_critic > 1)
    d_real: float  # mean D probability on the real images of the epoch
    d_fake: float  # mean D probability on the generated images of D's steps
    seconds: float
    steps_per_sec: float
    metrics: dict = field(default_factory=dict)  # filled by callers (e.g. evaluation scores)

    @property
    def d_loss(self) -> float:
        return float(self.d_losses.mean())

    @property
    def g_loss(self) -> float:
        return float(np.nanmean(self.g_losses))

    def to_dict(self) -> dict:
        """Plain JSON-able form, for checkpoints."""
        return {
            "epoch": self.epoch, "d_losses": self.d_losses.tolist(), "g_losses": self.g_losses.tolist(),
            "d_real": self.d_real, "d_fake": self.d_fake, "seconds": self.seconds,
            "steps_per_sec": self.steps_per_sec, "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, values: dict) -> "EpochRecord":
        return cls(**{**values, "d_losses": np.array(values["d_losses"]), "g_losses": np.array(values["g_losses"])})

    def summary(self) -> dict[str, float]:
        """The epoch's scalar metrics under their MLflow names."""
        return {
            scores.D_LOSS: self.d_loss,
            scores.G_LOSS: self.g_loss,
            scores.D_REAL: self.d_real,
            scores.D_FAKE: self.d_fake,
            scores.STEPS_PER_SEC: self.steps_per_sec,
            **self.metrics,
        }


class GanTrainer:
    """Holds G, D, their loss and optimizers and the training data; runs steps and epochs."""

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        train_images: np.ndarray,
        *,
        loss: GanLoss,
        d_optimizer: keras.optimizers.Optimizer,
        g_optimizer: keras.optimizers.Optimizer,
        batch_size: int,
        seed: int,
        ema: float | None = None,
        ema_warmup: bool = False,
    ):
        if ema is not None and not (isinstance(ema, (float, np.floating)) and 0 < ema < 1):
            raise ValueError(f"ema must be None or a float in (0, 1), got {ema!r}")
        self.generator = generator
        self.discriminator = discriminator
        self.loss = loss
        self.batch_size = batch_size
        self.random_dim = generator.input_shape[-1]
        self.image_shape = tuple(generator.output_shape[1:])  # the model's: (H*W,) for mlp, (H, W, 1) for dcgan
        # Held as uint8 and scaled per batch: a quarter of the memory, and the same float32
        # values as scaling the whole set up front (ganlab.core.data.unit_scaled).
        if train_images.dtype != np.uint8:
            raise TypeError(f"train_images must be uint8 grey levels, got {train_images.dtype}")
        self.train_images = tf.constant(train_images.reshape(len(train_images), *self.image_shape))
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.d_optimizer.build(discriminator.trainable_variables)
        self.g_optimizer.build(generator.trainable_variables)
        self.rng = tf.random.Generator.from_seed(seed)
        self.epochs_done = 0
        # EMA of G's weights: plain copies of G's initial values (nothing random is drawn).
        self.ema = None if ema is None else float(ema)
        self.ema_warmup = bool(ema_warmup) and self.ema is not None
        self.ema_half_life = None if self.ema is None else math.log(0.5) / math.log(self.ema)  # in G steps
        self.ema_variables = [] if ema is None else [
            tf.Variable(variable.numpy(), trainable=False, name="ema_" + variable.path.replace("/", "_"))
            for variable in generator.variables
        ]

    # Plain graph tracing, without AutoGraph's rewrite of the source: every branch and loop here is on a
    # Python value, fixed when tracing, so the graph is the same op for op, and each job traces ~0.3 CPU-s sooner.
    @tf.function(autograph=False)
    def train_step(self, update_generator: bool = True):
        """One D update and, if `update_generator`, one G update; returns (d_loss, g_loss, d_real, d_fake).
        (`update_generator` is a Python bool: each value is its own traced graph.)"""
        batch = self.batch_size
        index = self.rng.uniform([batch], 0, tf.shape(self.train_images)[0], dtype=tf.int32)
        real = unit_scaled(tf.cast(tf.gather(self.train_images, index), tf.float32))
        fake = self.generator(self.rng.normal([batch, self.random_dim]), training=True)
        with tf.GradientTape() as tape:
            logits = self.discriminator(tf.concat([real, fake], axis=0), training=True)
            real_logits, fake_logits = logits[:batch], logits[batch:]
            d_loss = self.loss.discriminator(real_logits, fake_logits)
            if self.loss.gradient_penalty:  # decided when tracing, like `ema` below
                mix = self.rng.uniform([batch] + [1] * len(self.image_shape))
                d_loss += self.loss.gradient_penalty * gradient_penalty(self.discriminator, real, fake, mix)
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars))

        g_loss = tf.constant(np.nan, tf.float32)
        if update_generator:
            # D is frozen (its weights are simply not updated) but in training mode, so its
            # dropout stays active, exactly as in the tutorial's combined model.
            with tf.GradientTape() as tape:
                fake = self.generator(self.rng.normal([batch, self.random_dim]), training=True)
                g_loss = self.loss.generator(self.discriminator(fake, training=True))
            g_vars = self.generator.trainable_variables
            self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, g_vars), g_vars))
            if self.ema is not None:  # decided when tracing: without EMA the step has no extra op
                decay = self.ema_decay() if self.ema_warmup else self.ema
                for average, variable in zip(self.ema_variables, self.generator.variables):
                    average.assign(decay * average + (1 - decay) * variable.value)

        return (d_loss, g_loss, tf.reduce_mean(self.loss.d_output(real_logits)),
                tf.reduce_mean(self.loss.d_output(fake_logits)))

    def ema_decay(self):
        """The warmed-up decay after G's step t (G's optimizer counts its steps, so resume keeps the ramp):
        0.5 ** (1 / min(H, EMA_RAMPUP * t)), never above `ema` (see the module's docstring)."""
        steps = tf.cast(self.g_optimizer.iterations, tf.float32)
        ramped = tf.minimum(tf.constant(self.ema_half_life, tf.float32), EMA_RAMPUP * tf.maximum(steps, 1.0))
        return tf.minimum(tf.pow(tf.constant(0.5, tf.float32), 1.0 / ramped), self.ema)

    def state_variables(self) -> list:
        """Every variable that the next step depends on, in a fixed order, G's first (`restore_generator`)."""
        return [
            *self.generator.variables, *self.discriminator.variables,  # weights and dropout seed states
            *self.g_optimizer.variables, *self.d_optimizer.variables,
            self.rng.state,
            *self.ema_variables,  # empty without EMA
        ]

    def get_state(self) -> list[np.ndarray]:
        return [np.array(variable.numpy()) for variable in self.state_variables()]

    def set_state(self, values: list[np.ndarray], epochs_done: int) -> None:
        """Restore what `get_state` returned; raises ValueError if the nets differ."""
        variables = self.state_variables()
        shapes = [tuple(variable.shape) for variable in variables]
        if [tuple(np.shape(value)) for value in values] != shapes:
            raise ValueError(f"the saved state does not fit these nets ({len(values)} arrays for {len(variables)} variables)")
        for variable, value in zip(variables, values):
            variable.assign(value)
        self.epochs_done = epochs_done

    def train_epoch(self, steps: int, progress: bool = True) -> EpochRecord:
        epoch = self.epochs_done + 1
        outputs = []
        bar = tqdm(range(steps), desc=f"epoch {epoch}", unit="step", disable=not progress, leave=True)
        start = time.perf_counter()
        n_critic = self.loss.n_critic
        for step in bar:
            # G moves after every n_critic-th D step, counted over the whole run, so resume keeps the rhythm.
            update_generator = ((epoch - 1) * steps + step + 1) % n_critic == 0
            outputs.append(self.train_step(update_generator))
            if step % 20 == 0 or step == steps - 1:  # reading every step costs more than it shows
                d_loss = float(outputs[-1][0])
                if not np.isfinite(d_loss):
                    break
                bar.set_postfix(d_loss=f"{d_loss:.3f}", refresh=False)
        bar.close()
        values = np.array([[float(v) for v in step_output] for step_output in outputs])
        g_moved = np.array([((epoch - 1) * steps + step + 1) % n_critic == 0 for step in range(len(values))])
        finite = np.isfinite(values[:, 0]) & (np.isfinite(values[:, 1]) | ~g_moved)
        bad_steps = np.flatnonzero(~finite)
        if len(bad_steps):
            step = int(bad_steps[0]) + 1
            d_loss, g_loss = values[step - 1, :2]
            raise TrainingDiverged(
                f"training diverged at epoch {epoch}, step {step} of {steps} "
                f"(global step {(epoch - 1) * steps + step}): d_loss={d_loss}, g_loss={g_loss}"
            )
        seconds = time.perf_counter() - start
        self.epochs_done = epoch
        return EpochRecord(
            epoch=epoch,
            d_losses=values[:, 0],
            g_losses=values[:, 1],
            d_real=float(values[:, 2].mean()),
            d_fake=float(values[:, 3].mean()),
            seconds=seconds,
            steps_per_sec=steps / seconds,
        )

    @contextmanager
    def ema_weights(self) -> Iterator[keras.Model]:
        """`with trainer.ema_weights(): ...` runs the body with G holding the EMA weights
        (to generate or save with them); G gets its live weights back afterwards, also on errors."""
        if self.ema is None:
            raise ValueError("EMA weights asked for, but this trainer keeps no EMA of G's weights (it was built with ema=None)")
        live = [np.array(variable.numpy()) for variable in self.generator.variables]
        try:
            for variable, average in zip(self.generator.variables, self.ema_variables):
                variable.assign(average)
            yield self.generator
        finally:
            for variable, value in zip(self.generator.variables, live):
                variable.assign(value)

    def generate(self, noise: np.ndarray, batch_size: int = 2000, ema: bool = False) -> np.ndarray:
        """Images in [-1, 1], shape (N, *image_shape), from the given noise (inference mode);
        with `ema=True` from the EMA weights (ValueError if the trainer keeps none)."""
        if ema:
            with self.ema_weights():
                return self.generate(noise, batch_size)
        batches = [self.generator(noise[i : i + batch_size], training=False).numpy() for i in range(0, len(noise), batch_size)]
        return np.concatenate(batches)


def restore_generator(generator: keras.Model, state: list[np.ndarray]) -> None:
    """Put G's part of a trainer's saved state (`GanTrainer.get_state`, which starts with G's variables) into `generator`."""
    for variable, value in zip(generator.variables, state[: len(generator.variables)]):
        variable.assign(value)

"""The reference GAN training step (one `tf.function`) and the epoch loop around it.

Each step, as in the tutorial:
1. draw `batch_size` real images uniformly with replacement and as many noise vectors;
2. train D on [real, G(noise)] with targets [1 - label_smoothing, 0] (one-sided smoothing),
   dropout active;
3. train G through a frozen D (only G's weights move; D's dropout stays active) on fresh
   noise with target 1.

The training set lives in a tensor and the random draws come from a seeded
`tf.random.Generator`, so a step never leaves TensorFlow. The loop knows nothing of
tracking: it hands an `EpochRecord` per epoch to an optional callback and returns them all.

With `ema` set, the step also keeps an exponential moving average of G's weights (updated
right after G's step, checkpointed with the rest of the state) for generating and saving
through `ema_weights()`; it never changes what is trained, and without `ema` the step is
exactly the plain one above.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ganlab.errors import TrainingDiverged


@dataclass
class EpochRecord:
    """What one epoch produced: per-step losses and the epoch means."""

    epoch: int  # 1-based
    d_losses: np.ndarray  # per step
    g_losses: np.ndarray  # per step
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
        return float(self.g_losses.mean())

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
            "d_loss": self.d_loss,
            "g_loss": self.g_loss,
            "d_real": self.d_real,
            "d_fake": self.d_fake,
            "steps_per_sec": self.steps_per_sec,
            **self.metrics,
        }


class GanTrainer:
    """Holds G, D, their optimizers and the training data; runs steps and epochs."""

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        train_images: np.ndarray,
        *,
        batch_size: int,
        label_smoothing: float,
        learning_rate: float,
        beta_1: float,
        seed: int,
        ema: float | None = None,
    ):
        if ema is not None and not (isinstance(ema, (float, np.floating)) and 0 < ema < 1):
            raise ValueError(f"ema must be None or a float in (0, 1), got {ema!r}")
        self.generator = generator
        self.discriminator = discriminator
        self.batch_size = batch_size
        self.random_dim = generator.input_shape[-1]
        self.real_target = 1.0 - label_smoothing
        # Held as uint8 and scaled per batch: a quarter of the memory, and the same float32
        # values as scaling the whole set up front, (x - 127.5) / 127.5.
        if train_images.dtype != np.uint8:
            raise TypeError(f"train_images must be uint8 grey levels, got {train_images.dtype}")
        self.train_images = tf.constant(train_images.reshape(len(train_images), -1))
        # D and G each get their own Adam, as DESIGN.md states the reference loop.
        self.d_optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1)
        self.g_optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1)
        self.d_optimizer.build(discriminator.trainable_variables)
        self.g_optimizer.build(generator.trainable_variables)
        self.rng = tf.random.Generator.from_seed(seed)
        self.epochs_done = 0
        # EMA of G's weights: plain copies of G's initial values (nothing random is drawn).
        self.ema = None if ema is None else float(ema)
        self.ema_variables = [] if ema is None else [
            tf.Variable(variable.numpy(), trainable=False, name="ema_" + variable.path.replace("/", "_"))
            for variable in generator.variables
        ]

    @tf.function
    def train_step(self):
        """One D update and one G update; returns (d_loss, g_loss, d_real, d_fake)."""
        batch = self.batch_size
        index = self.rng.uniform([batch], 0, tf.shape(self.train_images)[0], dtype=tf.int32)
        real = (tf.cast(tf.gather(self.train_images, index), tf.float32) - 127.5) / 127.5
        fake = self.generator(self.rng.normal([batch, self.random_dim]), training=True)
        images = tf.concat([real, fake], axis=0)
        targets = tf.concat([tf.fill([batch, 1], self.real_target), tf.zeros([batch, 1])], axis=0)
        with tf.GradientTape() as tape:
            logits = self.discriminator(images, training=True)
            d_loss = _bce_from_logits(targets, logits)
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars))

        # G's update: D is frozen (its weights are simply not updated) but in training
        # mode, so its dropout stays active, exactly as in the tutorial's combined model.
        with tf.GradientTape() as tape:
            fake = self.generator(self.rng.normal([batch, self.random_dim]), training=True)
            fake_logits = self.discriminator(fake, training=True)
            g_loss = _bce_from_logits(tf.ones([batch, 1]), fake_logits)
        g_vars = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, g_vars), g_vars))
        if self.ema is not None:  # decided when tracing: without EMA the step has no extra op
            for average, variable in zip(self.ema_variables, self.generator.variables):
                average.assign(self.ema * average + (1 - self.ema) * variable.value)

        probabilities = tf.sigmoid(logits)
        return d_loss, g_loss, tf.reduce_mean(probabilities[:batch]), tf.reduce_mean(probabilities[batch:])

    def state_variables(self) -> list:
        """Every variable that the next step depends on, in a fixed order."""
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
        for step in bar:
            outputs.append(self.train_step())
            if step % 20 == 0 or step == steps - 1:  # reading every step costs more than it shows
                d_loss, g_loss = float(outputs[-1][0]), float(outputs[-1][1])
                if not (np.isfinite(d_loss) and np.isfinite(g_loss)):
                    break
                bar.set_postfix(d_loss=f"{d_loss:.3f}", g_loss=f"{g_loss:.3f}", refresh=False)
        bar.close()
        values = np.array([[float(v) for v in step_output] for step_output in outputs])
        bad_steps = np.flatnonzero(~np.isfinite(values[:, :2]).all(axis=1))
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

    def train(
        self,
        epochs: int,
        steps_per_epoch: int,
        on_epoch_end: Callable[[EpochRecord], None] | None = None,
        progress: bool = True,
    ) -> list[EpochRecord]:
        """Train `epochs` more epochs; call `on_epoch_end(record)` after each one."""
        records = []
        for _ in range(epochs):
            record = self.train_epoch(steps_per_epoch, progress=progress)
            if on_epoch_end is not None:
                on_epoch_end(record)
            records.append(record)
        return records

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
        """Images in [-1, 1], shape (N, 784), from the given noise (inference mode);
        with `ema=True` from the EMA weights (ValueError if the trainer keeps none)."""
        if ema:
            with self.ema_weights():
                return self.generate(noise, batch_size)
        batches = [self.generator(noise[i : i + batch_size], training=False).numpy() for i in range(0, len(noise), batch_size)]
        return np.concatenate(batches)


def _bce_from_logits(targets, logits):
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits))

"""The EMA of G's weights in `GanTrainer`: it never changes training, averages as stated,
swaps in and out cleanly, and survives a checkpoint round trip.

The nets are tiny ones built here (same layer kinds as ganlab's, a few units), so the
tests are fast and do not depend on how `ganlab.gan.models` takes its arguments.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import FIXTURE_MNIST
from ganlab.core.data import load_dataset
from ganlab.gan.trainer import GanTrainer
from ganlab.gan.losses import NonSaturating

RANDOM_DIM = 8
EMA = 0.9  # far from 1, so a few steps move the average visibly away from the live weights


def TUTORIAL_LOSS_AND_OPTIMIZERS() -> dict:  # noqa: N802 - fresh optimizers for every trainer
    return {"loss": NonSaturating(label_smoothing=0.1), "batch_size": 16,
            "d_optimizer": keras.optimizers.Adam(2e-4, beta_1=0.5), "g_optimizer": keras.optimizers.Adam(2e-4, beta_1=0.5)}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_dataset("mnist", str(FIXTURE_MNIST)).x_train


def tiny_nets(seed: int) -> tuple[keras.Sequential, keras.Sequential]:
    keras.utils.set_random_seed(seed)
    generator = keras.Sequential([
        keras.Input(shape=(RANDOM_DIM,)),
        keras.layers.Dense(16, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02)),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.Dense(28 * 28, activation="tanh"),
    ])
    discriminator = keras.Sequential([
        keras.Input(shape=(28 * 28,)),
        keras.layers.Dense(16, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02)),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(1),
    ])
    return generator, discriminator


def trainer(images, ema=None, seed=0) -> GanTrainer:
    generator, discriminator = tiny_nets(seed)
    return GanTrainer(generator, discriminator, images, seed=seed, ema=ema, **TUTORIAL_LOSS_AND_OPTIMIZERS())


def losses(gan: GanTrainer, steps: int) -> list[tuple[float, float]]:
    return [tuple(float(value) for value in gan.train_step()[:2]) for _ in range(steps)]


def weights(variables) -> list[np.ndarray]:
    return [np.array(variable.numpy()) for variable in variables]


def assert_same(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


def test_ema_does_not_change_training(images):
    plain, averaged = trainer(images), trainer(images, ema=0.999)
    assert losses(averaged, 10) == losses(plain, 10)
    assert_same(weights(averaged.generator.variables), weights(plain.generator.variables))


def test_ema_is_the_average_of_the_weights_after_each_step(images):
    gan = trainer(images, ema=EMA)
    expected = weights(gan.generator.variables)  # the average starts at G's initial weights
    assert_same(weights(gan.ema_variables), expected)
    for _ in range(5):
        gan.train_step()
        live = weights(gan.generator.variables)
        expected = [np.float32(EMA) * e + np.float32(1 - EMA) * w for e, w in zip(expected, live)]
    assert len(gan.ema_variables) == len(gan.generator.variables) == 4  # 2 kernels, 2 biases
    for average, value, live_value in zip(weights(gan.ema_variables), expected, live):
        np.testing.assert_allclose(average, value, rtol=1e-6, atol=1e-9)
        assert not np.allclose(average, live_value, rtol=1e-6, atol=1e-9)  # the test can tell them apart


def test_ema_weights_swaps_in_and_back(images):
    gan = trainer(images, ema=EMA)
    losses(gan, 5)
    live, averages = weights(gan.generator.variables), weights(gan.ema_variables)
    noise = np.random.default_rng(0).normal(size=(10, RANDOM_DIM)).astype(np.float32)
    live_images = gan.generate(noise)

    with gan.ema_weights() as generator:
        assert generator is gan.generator
        assert_same(weights(gan.generator.variables), averages)
        ema_images = gan.generate(noise)
    assert_same(weights(gan.generator.variables), live)
    assert_same(weights(gan.ema_variables), averages)
    np.testing.assert_array_equal(gan.generate(noise, ema=True), ema_images)
    assert not np.array_equal(ema_images, live_images)
    assert_same(weights(gan.generator.variables), live)

    with pytest.raises(KeyError, match="raised inside"):
        with gan.ema_weights():
            raise KeyError("raised inside")
    assert_same(weights(gan.generator.variables), live)
    assert_same(weights(gan.ema_variables), averages)


def test_state_round_trip_continues_the_ema(images):
    first = trainer(images, ema=EMA)
    losses(first, 3)
    state = first.get_state()
    assert len(state) == len(trainer(images).get_state()) + len(first.ema_variables)
    expected_losses = losses(first, 3)

    second = trainer(images, ema=EMA, seed=1)  # other initial weights and draws until restored
    second.set_state(state, epochs_done=1)
    assert losses(second, 3) == expected_losses
    assert_same(weights(second.ema_variables), weights(first.ema_variables))
    assert_same(weights(second.generator.variables), weights(first.generator.variables))


def test_ema_use_without_ema_is_an_error(images):
    gan = trainer(images)
    assert gan.get_state() and not gan.ema_variables
    noise = np.zeros((2, RANDOM_DIM), np.float32)
    with pytest.raises(ValueError, match="ema=None"):
        gan.generate(noise, ema=True)
    with pytest.raises(ValueError, match="ema=None"):
        with gan.ema_weights():
            pass


@pytest.mark.parametrize("ema", [0.0, 1.0, 1.5, -0.1, 1])
def test_ema_outside_zero_one_is_rejected(images, ema):
    generator, discriminator = tiny_nets(0)
    with pytest.raises(ValueError, match="ema must be"):
        GanTrainer(generator, discriminator, images, seed=0, ema=ema, **TUTORIAL_LOSS_AND_OPTIMIZERS())

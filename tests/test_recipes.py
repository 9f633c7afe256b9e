"""loss=wgan_gp as its paper has it (Gulrajani et al. 2017): the gradient penalty of the critic without
dropout, and the paper's optimizer as a choice (`optimizer=wgan_gp`) that the loss study's sweep uses for
its wgan_gp arm while the other arms keep the tutorial's Adam."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO
from ganlab.gan.losses import gradient_penalty
from ganlab.gan.optimizers import build_optimizers


def test_the_penalty_is_taken_of_the_critic_without_dropout():
    """With dropout 0.9 in the critic, a penalty taken in training mode would change from call to call;
    the paper's penalty is the same every time and equals that of the same critic without dropout."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    critic = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dropout(0.9)(hidden)))
    plain = keras.Model(inputs, critic.layers[-1](critic.layers[1](inputs)))  # the same weights, no dropout layer
    rng = np.random.default_rng(0)
    real, fake = (tf.constant(rng.standard_normal((64, 16)), tf.float32) for _ in range(2))
    mix = tf.constant(rng.uniform(size=(64, 1)), tf.float32)
    first, second = (float(gradient_penalty(critic, real, fake, mix)) for _ in range(2))
    assert first == second == pytest.approx(float(gradient_penalty(plain, real, fake, mix)), rel=1e-6)
    with tf.GradientTape() as tape:  # the same critic in training mode: its dropout does change the gradient
        mixed = mix * real + (1 - mix) * fake
        tape.watch(mixed)
        outputs = critic(mixed, training=True)
    norms = tf.norm(tape.gradient(outputs, mixed), axis=1)
    assert float(tf.reduce_mean(tf.square(norms - 1.0))) != pytest.approx(first, rel=1e-3)


def compose_study(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "sweeps"), version_base="1.3"):
        composed = compose(config_name="losses", overrides=[f"hydra.searchpath=[file://{REPO / 'conf'}]", *overrides])
    GlobalHydra.instance().clear()
    return composed


def test_the_loss_study_trains_wgan_gp_with_its_papers_optimizer_and_the_rest_with_the_tutorials():
    wgan_gp = compose_study(["loss=wgan_gp"])
    assert (wgan_gp.optimizer.name, wgan_gp.optimizer.lr, wgan_gp.optimizer.beta_1, wgan_gp.optimizer.beta_2) == (
        "wgan_gp", 1e-4, 0.0, 0.9)
    for loss in ("ns", "hinge", "lsgan"):
        other = compose_study([f"loss={loss}"])
        assert (other.optimizer.name, other.optimizer.lr, other.optimizer.beta_1) == ("adam", 2e-4, 0.5), loss


def test_the_recipes_adam_has_the_papers_betas():
    d_optimizer, g_optimizer = build_optimizers(compose_study(["loss=wgan_gp"]).optimizer)
    for optimizer in (d_optimizer, g_optimizer):
        assert (float(optimizer.learning_rate), optimizer.beta_1, optimizer.beta_2) == pytest.approx((1e-4, 0.0, 0.9))
    assert d_optimizer is not g_optimizer

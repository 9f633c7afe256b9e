"""Models, losses and optimizers chosen by name: every combination trains, each loss is the
formula its paper gives, knobs a choice does not read are refused, and resume is bit for bit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir

from conftest import FIXTURE_MNIST, REPO, QUICK, all_runs, run_cli
from ganlab.training import checkpoint
from ganlab.core import config
from ganlab.gan import choices
from ganlab.core.data import load_dataset
from ganlab.core.errors import InputError
from ganlab.gan.losses import LOSSES, build_loss, gradient_penalty
from ganlab.gan.models import MODELS
from ganlab.gan.optimizers import OPTIMIZERS

REAL_LOGITS = np.array([[2.0], [-1.0], [0.5]], np.float32)
FAKE_LOGITS = np.array([[-3.0], [1.5], [0.0]], np.float32)


def compose_train(overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_dataset("mnist", str(FIXTURE_MNIST)).x_train[:256]


def trainer_for(overrides, images):
    from ganlab.gan.choices import build_trainer
    from ganlab.core.runtime import configure_tensorflow

    cfg = compose_train(overrides)
    config.validate(cfg)
    configure_tensorflow(cfg.seed, None, deterministic=True)

    return build_trainer(cfg, images)


# ---------------------------------------------------------------------------- the registries


def test_every_group_offers_its_choices_and_a_yaml_for_each():
    expected = {"model": {"mlp", "dcgan"}, "loss": {"ns", "hinge", "lsgan", "wgan_gp"}, "optimizer": {"adam", "ttur", "wgan_gp"}}
    for group, registry in choices.registries().items():
        assert set(registry.names()) == expected[group]
        assert {path.stem for path in (REPO / "conf" / group).glob("*.yaml")} == expected[group]


@pytest.mark.parametrize("group", ["model", "optimizer", "loss"])
def test_an_unknown_name_is_refused_with_the_known_ones(group):
    with pytest.raises(InputError, match=rf"^{group}.name: got 'nope'; known choices: .*{choices.registries()[group].names()[1]}"):
        config.validate(compose_train([f"{group}.name=nope"]), choices.registries())


def test_the_default_is_the_tutorial():
    cfg = compose_train()
    assert (cfg.model.name, cfg.loss.name, cfg.optimizer.name, cfg.loss.n_critic) == ("mlp", "ns", "adam", 1)
    assert cfg.label_smoothing == 0.1


# ---------------------------------------------------------------------------- every pair of choices trains


def every_pair(models, losses, optimizers) -> list[tuple[str, str, str]]:
    """Combinations in which every pair of choices (model and loss, model and optimizer, loss and optimizer)
    trains together at least once: a pairwise covering set, 12 jobs where the full product is 24 (the
    interactions that matter are between two choices: the penalty on a model's layers, a loss's critic
    steps under an optimizer's betas)."""
    rows = [(models[(i + j) % len(models)], loss, optimizer)
            for i, loss in enumerate(losses) for j, optimizer in enumerate(optimizers)]
    missed = [pair for a, b in itertools.combinations(range(3), 2)
              for pair in itertools.product(*([models, losses, optimizers][k] for k in (a, b)))
              if not any((row[a], row[b]) == pair for row in rows)]
    assert not missed, f"add rows for {missed}"  # e.g. a third model beside two optimizers
    return rows


@pytest.mark.parametrize("model,loss,optimizer", every_pair(MODELS.names(), LOSSES.names(), OPTIMIZERS.names()))
def test_every_pair_of_choices_trains_a_few_steps_with_finite_losses(images, model, loss, optimizer):
    trainer = trainer_for([f"model={model}", f"loss={loss}", f"optimizer={optimizer}", "batch_size=8"], images)
    record = trainer.train_epoch(steps=trainer.loss.n_critic, progress=False)
    assert np.isfinite(record.d_losses).all()
    assert np.isfinite(record.g_loss) and np.isfinite(record.g_losses).sum() == 1  # G stepped once
    generated = trainer.generate(np.zeros((2, trainer.random_dim), np.float32))
    assert generated.shape == (2, *trainer.image_shape) and np.abs(generated).max() <= 1


def test_the_four_losses_give_different_d_losses_from_the_same_seed(images):
    first = {loss: trainer_for([f"loss={loss}", "batch_size=8"], images).train_epoch(steps=1, progress=False).d_loss
             for loss in LOSSES.names()}
    assert len(set(first.values())) == 4, first


def test_dcgan_is_the_tensorflow_tutorials_architecture(images):
    import keras

    trainer = trainer_for(["model=dcgan", "dropout=0.2"], images)
    generator, discriminator = trainer.generator, trainer.discriminator
    transposed = [layer for layer in generator.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert [(layer.filters, layer.strides) for layer in transposed] == [(128, (1, 1)), (64, (2, 2)), (1, (2, 2))]
    assert generator.layers[0].units == 7 * 7 * 256 and not generator.layers[0].use_bias
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in generator.layers) == 3
    assert generator.output_shape == (None, 28, 28, 1) and transposed[-1].activation.__name__ == "tanh"
    convs = [layer for layer in discriminator.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(layer.filters, layer.kernel_size, layer.strides) for layer in convs] == [(64, (5, 5), (2, 2)), (128, (5, 5), (2, 2))]
    assert [layer.rate for layer in discriminator.layers if isinstance(layer, keras.layers.Dropout)] == [0.2, 0.2]
    assert discriminator.output_shape == (None, 1)


def test_ttur_gives_d_and_g_their_own_rates_and_betas(images):
    trainer = trainer_for(["optimizer=ttur"], images)
    assert float(trainer.d_optimizer.learning_rate) == pytest.approx(4e-4)
    assert float(trainer.g_optimizer.learning_rate) == pytest.approx(1e-4)
    assert (trainer.d_optimizer.beta_1, trainer.d_optimizer.beta_2) == (0.0, 0.9)


# ---------------------------------------------------------------------------- the formulas, by hand


def softplus(x):
    return math.log1p(math.exp(x))


def loss_values(name, **knobs):
    cfg = compose_train([f"loss={name}"])
    loss = build_loss(cfg.loss, knobs.get("label_smoothing", cfg.label_smoothing))
    return float(loss.discriminator(REAL_LOGITS, FAKE_LOGITS)), float(loss.generator(FAKE_LOGITS))


def test_ns_is_cross_entropy_with_one_sided_smoothing():
    real_target = 0.8
    # BCE(t, l) = softplus(l) - t * l, averaged over the 3 real and 3 generated logits together.
    expected_d = sum(softplus(l) - real_target * l for l in REAL_LOGITS.ravel()) + sum(softplus(l) for l in FAKE_LOGITS.ravel())
    expected_g = sum(softplus(l) - l for l in FAKE_LOGITS.ravel()) / 3
    d_loss, g_loss = loss_values("ns", label_smoothing=0.2)
    assert d_loss == pytest.approx(expected_d / 6, rel=1e-6) and g_loss == pytest.approx(expected_g, rel=1e-6)


def test_hinge_lsgan_and_wgan_are_their_papers_formulas():
    # hinge: mean relu(1 - [2, -1, .5]) + mean relu(1 + [-3, 1.5, 0]) = (0 + 2 + .5)/3 + (0 + 2.5 + 1)/3
    assert loss_values("hinge") == pytest.approx((2.5 / 3 + 3.5 / 3, -(-1.5 / 3)))
    # lsgan: ((1 + 4 + .25)/3 + (9 + 2.25 + 0)/3) / 2 and mean((f - 1)^2)/2 = (16 + .25 + 1)/3/2
    assert loss_values("lsgan") == pytest.approx(((5.25 / 3 + 11.25 / 3) / 2, 17.25 / 6))
    # wgan (without the penalty, which needs D): mean fake - mean real = -.5 - .5
    assert loss_values("wgan_gp") == pytest.approx((-1.5 / 3 - 1.5 / 3, 1.5 / 3))


def test_the_gradient_penalty_of_a_linear_critic_is_its_closed_form():
    """D(x) = w.x + b has gradient w everywhere, so the penalty is (|w| - 1)^2 whatever the mix."""
    import keras

    rng = np.random.default_rng(0)
    critic = keras.Sequential([keras.Input(shape=(6,)), keras.layers.Dense(1)])
    weights = rng.normal(size=(6, 1)).astype(np.float32)
    critic.layers[0].kernel.assign(weights)
    real, fake = (rng.uniform(-1, 1, (4, 6)).astype(np.float32) for _ in range(2))
    mix = rng.uniform(size=(4, 1)).astype(np.float32)
    penalty = float(gradient_penalty(critic, tf.constant(real), tf.constant(fake), tf.constant(mix)))
    assert penalty == pytest.approx((np.linalg.norm(weights) - 1) ** 2, rel=1e-5)
    critic.layers[0].kernel.assign(weights / np.linalg.norm(weights))  # a unit gradient: no penalty
    assert float(gradient_penalty(critic, tf.constant(real), tf.constant(fake), tf.constant(mix))) == pytest.approx(0, abs=1e-6)


def test_n_critic_steps_g_once_per_n_critic_d_steps_across_epochs(images):
    trainer = trainer_for(["loss=wgan_gp", "loss.n_critic=3", "batch_size=8"], images)
    first, second = (trainer.train_epoch(steps=4, progress=False) for _ in range(2))
    # D steps 1..8 of the run; G moves after D steps 3 and 6.
    assert list(np.isfinite(first.g_losses)) == [False, False, True, False]
    assert list(np.isfinite(second.g_losses)) == [False, True, False, False]


# ---------------------------------------------------------------------------- knobs a choice does not read


def test_a_loss_without_label_smoothing_sets_it_aside_and_refuses_it():
    cfg = compose_train(["loss=hinge"])
    assert cfg.label_smoothing is None
    config.validate(cfg)
    with pytest.raises(InputError, match="^label_smoothing: got 0.2, but loss=hinge does not use label smoothing"):
        build_loss(compose_train(["loss=hinge", "label_smoothing=0.2"]).loss, 0.2)


def test_the_cli_refuses_an_unused_knob_in_one_line(workdir):
    """Through the CLI once (an unknown name takes the same path: test_an_unknown_name_is_refused_with_the_known_ones)."""
    result = run_cli([*QUICK, "loss=hinge", "label_smoothing=0.2"], workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: label_smoothing: got 0.2, but loss=hinge")
    assert {run.info.status for run in all_runs(workdir)} == {"FAILED"}


# ---------------------------------------------------------------------------- resume, bit for bit


@pytest.mark.parametrize("overrides", [["model=dcgan"], ["loss=wgan_gp", "loss.n_critic=3"], ["model=dcgan", "loss=wgan_gp", "ema=0.9"]])
def test_a_trainer_restored_from_a_checkpoint_goes_on_bit_for_bit(images, tmp_path, overrides):
    """Every variable the next step depends on is in the checkpoint: BatchNorm statistics, the
    optimizers, the random generator, and the place in the n_critic rhythm (from the epoch)."""
    settings = [*overrides, "batch_size=8"]
    straight = trainer_for(settings, images)
    first = straight.train_epoch(steps=4, progress=False)
    checkpoint.save(tmp_path, straight.get_state(), [first.to_dict()], {"epoch": 1, "config": {}})
    expected = straight.train_epoch(steps=4, progress=False)

    resumed = trainer_for(settings, images)
    values, _ = checkpoint.load_state(checkpoint.find(tmp_path))
    resumed.set_state(values, epochs_done=1)
    again = resumed.train_epoch(steps=4, progress=False)
    np.testing.assert_array_equal(again.d_losses, expected.d_losses)
    np.testing.assert_array_equal(again.g_losses, expected.g_losses)
    noise = np.ones((2, straight.random_dim), np.float32)
    np.testing.assert_array_equal(resumed.generate(noise), straight.generate(noise))


# ---------------------------------------------------------------------------- the whole job, through the CLI


def test_a_dcgan_wgan_gp_ttur_job_runs_end_to_end_and_logs_a_loadable_generator(dcgan_job, monkeypatch):
    """Evaluation, sample grids, checkpoint and the MLflow model take the image shape from the data
    (conftest's DCGAN_JOB)."""
    import mlflow

    from conftest import store_client

    workdir, _ = dcgan_job
    (run,) = all_runs(workdir)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["model.name"], params["loss.name"], params["optimizer.name"]) == ("dcgan", "wgan_gp", "ttur")
    assert (params["optimizer.d_lr"], params["optimizer.g_lr"], params["loss.n_critic"]) == ("0.0004", "0.0001", "5")
    assert "label_smoothing" not in params  # wgan_gp sets it aside
    assert {"fid", "d_loss", "g_loss"} <= set(run.data.metrics)
    client = store_client(workdir)
    models = {client.get_logged_model(output.model_id).name: output.model_id for output in run.outputs.model_outputs}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # for models:/ URIs
    images = mlflow.pyfunc.load_model(f"models:/{models['generator']}").predict(np.zeros((2, 100), np.float32))
    assert images.shape == (2, 28, 28, 1) and np.all(np.abs(images) <= 1.0)


def test_every_dtype_of_the_config_has_a_keras_policy():
    from ganlab.gan.models import HIDDEN_POLICY

    assert tuple(HIDDEN_POLICY) == config.DTYPES

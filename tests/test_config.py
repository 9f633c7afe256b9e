"""Configs compose, and each knob reaches the model, the optimizer or the loss targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO
from ganlab.core import config
from ganlab.core.errors import InputError


def compose_train(overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)


def test_default_config_is_the_tutorial():
    cfg = compose_train()
    config.validate(cfg)
    assert (cfg.seed, cfg.batch_size, cfg.random_dim) == (10, 128, 100)
    assert (cfg.dropout, cfg.label_smoothing) == (0.3, 0.1)
    assert cfg.steps_per_epoch is None and config.steps_per_epoch(cfg, 60000) == 469
    assert cfg.model.name == "mlp" and list(cfg.model.generator_units) == [256, 512, 1024]
    assert list(cfg.model.discriminator_units) == [1024, 512, 256]
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.beta_1) == ("adam", 2e-4, 0.5)
    assert cfg.data == {"name": "mnist", "path": None, "download": None}  # download: null = once per machine (core.data)
    assert cfg.tracking.experiment == "ganlab" and cfg.eval.num_samples == 10000


def test_each_knob_has_one_name():
    """The knobs the nets use live at the top level only: no model.* copy to drift or go unchecked."""
    cfg = compose_train(["dropout=0.1", "random_dim=64"])
    assert (cfg.dropout, cfg.random_dim) == (0.1, 64)
    assert not {"dropout", "random_dim", "dtype", "precision"} & set(cfg.model)
    assert "precision" not in cfg  # `precision` is a score (k-NN precision); the knob is `dtype`


@pytest.mark.parametrize("override", ["model.dropout=1.5", "model.random_dim=7", "precision=bf16"])
def test_a_second_name_for_a_knob_is_refused_by_hydra(override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_train([override])


def test_run_params_hold_one_name_per_knob_and_no_nulls():
    from ganlab.core.scores import REGISTRY
    from ganlab.tracking.store import run_params

    params = run_params(config.resolved(compose_train(["dropout=0.1"])))
    assert params["dropout"] == 0.1 and params["dtype"] == "fp32"
    assert not [key for key in params if key.startswith("model.") and key.split(".")[1] in ("dropout", "random_dim", "dtype")]
    assert None not in params.values()
    assert not set(params) & set(REGISTRY)  # no param shares a name with a metric
    assert not [key for key in params if key.startswith(("tracking.", "resume", "checkpoint."))]


def test_configs_compose_into_a_tmp_dir(tmp_path):
    cfg = compose_train(["data=fashion_mnist", "epochs=3"])
    file = tmp_path / "config.yaml"
    OmegaConf.save(cfg, file)
    loaded = OmegaConf.load(file)
    assert loaded.data.name == "fashion_mnist" and loaded.epochs == 3


def test_dropout_knob_sets_all_three_dropout_layers():
    import keras

    from ganlab.gan.models import build_nets

    for model, layers in (("mlp", 3), ("dcgan", 2)):
        _, net = build_nets(compose_train(["dropout=0.1", f"model={model}"]), (28, 28))
        rates = [layer.rate for layer in net.layers if isinstance(layer, keras.layers.Dropout)]
        assert rates == [0.1] * layers


def test_model_matches_the_tutorial_architecture():
    import keras

    from ganlab.gan.models import build_nets

    generator, discriminator = build_nets(compose_train(), (28, 28))
    dense = lambda net: [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]  # noqa: E731
    assert [layer.units for layer in dense(generator)] == [256, 512, 1024, 784]
    assert [layer.units for layer in dense(discriminator)] == [1024, 512, 256, 1]
    assert dense(generator)[-1].activation.__name__ == "tanh"
    assert generator.input_shape == (None, 100) and discriminator.input_shape == (None, 784)
    first_init = dense(generator)[0].kernel_initializer
    assert isinstance(first_init, keras.initializers.RandomNormal) and first_init.stddev == 0.02
    assert isinstance(dense(discriminator)[1].kernel_initializer, keras.initializers.GlorotUniform)
    assert all(layer.negative_slope == pytest.approx(0.2) for layer in generator.layers if isinstance(layer, keras.layers.LeakyReLU))


def _trainer(cfg, images):
    from ganlab.gan.choices import build_trainer

    return build_trainer(cfg, images)


def test_label_smoothing_sets_the_real_target_in_the_loss():
    """With D's kernels zeroed and its last bias at b, every logit is b, so the first D loss
    is 0.5 * (BCE(real_target, b) + BCE(0, b)): it tells which real target the step used."""
    cfg = compose_train(["label_smoothing=0.2", "batch_size=16"])
    trainer = _trainer(cfg, np.zeros((64, 28, 28), np.uint8))
    bias = 1.0
    for layer in trainer.discriminator.layers:
        for weight in layer.weights:
            weight.assign(np.zeros(weight.shape, np.float32))
    trainer.discriminator.layers[-1].bias.assign([bias])
    d_loss, _, d_real, _ = (float(v) for v in trainer.train_step())

    def bce(target, logit):
        return math.log1p(math.exp(-logit)) + (1 - target) * logit

    assert trainer.loss.real_target == pytest.approx(0.8)
    assert d_loss == pytest.approx(0.5 * (bce(0.8, bias) + bce(0.0, bias)), rel=1e-5)
    assert d_loss != pytest.approx(0.5 * (bce(0.9, bias) + bce(0.0, bias)), rel=1e-5)
    assert d_real == pytest.approx(1 / (1 + math.exp(-bias)), rel=1e-5)


def test_optimizer_and_batch_knobs_reach_the_trainer():
    cfg = compose_train(["optimizer.lr=0.001", "optimizer.beta_1=0.7", "batch_size=32", "random_dim=20"])
    trainer = _trainer(cfg, np.zeros((64, 28, 28), np.uint8))
    for optimizer in (trainer.d_optimizer, trainer.g_optimizer):
        assert float(optimizer.learning_rate) == pytest.approx(0.001)
        assert optimizer.beta_1 == pytest.approx(0.7)
    assert trainer.d_optimizer is not trainer.g_optimizer
    assert trainer.batch_size == 32 and trainer.random_dim == 20


def test_steps_per_epoch_is_derived_or_taken():
    assert config.steps_per_epoch(compose_train(), 60000) == 469
    assert config.steps_per_epoch(compose_train(["batch_size=100"]), 60000) == 600
    assert config.steps_per_epoch(compose_train(["steps_per_epoch=7"]), 60000) == 7


def test_same_seed_gives_identical_per_step_losses_and_another_seed_does_not():
    from ganlab.core.runtime import configure_tensorflow

    images = np.random.default_rng(0).integers(0, 256, (512, 784), dtype=np.uint8)

    def losses(seed):
        cfg = compose_train([f"seed={seed}", "batch_size=32"])
        configure_tensorflow(cfg.seed, None, deterministic=True)
        trainer = _trainer(cfg, images)
        record = trainer.train_epoch(steps=15, progress=False)
        return np.concatenate([record.d_losses, record.g_losses])

    first, second, other = losses(3), losses(3), losses(4)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dropout=1.0", "dropout"),
        ("dropout=-0.1", "dropout"),
        ("label_smoothing=1.0", "label_smoothing"),
        ("label_smoothing=-0.5", "label_smoothing"),
        ("batch_size=0", "batch_size"),
        ("epochs=-1", "epochs"),
        ("epochs=abc", "epochs"),
        ("epochs=1.5", "epochs"),
        ("steps_per_epoch=0", "steps_per_epoch"),
        ("seed=-3", "seed"),
        ("random_dim=0", "random_dim"),
        ("dropout=high", "dropout"),
        ("deterministic=maybe", "deterministic"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("model.name=resnet", "model.name"),
        ("eval.every=0", "eval.every"),
        ("eval.num_samples=10", "eval.num_samples"),
        ("objective=accuracy", "objective"),
        ("dtype=fp16", "dtype"),
        ("ema=1.0", "ema"),
        ("ema=0", "ema"),
        ("objective_at=worst", "objective_at"),
        ("checkpoint.keep=all", "checkpoint.keep"),
        ("optimizer.lr=nan", "optimizer.lr"),
        ("optimizer.lr=inf", "optimizer.lr"),
        ("model.leaky_relu_slope=nan", "model.leaky_relu_slope"),
        ("model.first_layer_init_stddev=inf", "model.first_layer_init_stddev"),
        ("dropout=nan", "dropout"),
        ("data.path=''", "data.path"),
        ("tracking.uri=123", "tracking.uri"),
        ("tracking.uri=foo://bar", "tracking.uri"),
        ("tracking.experiment=123", "tracking.experiment"),
        ("tracking.experiment=../../x", "tracking.experiment"),
        ("tracking.experiment=/abs/x", "tracking.experiment"),
        ("threads=0", "threads"),
        ("model.generator_units=[256,0]", "model.generator_units"),
        ("model.leaky_relu_slope=-1", "model.leaky_relu_slope"),
        ("model.first_layer_init_stddev=0", "model.first_layer_init_stddev"),
        ("optimizer.beta_1=1.0", "optimizer.beta_1"),
        ("optimizer.name=sgd", "optimizer.name"),
        ("eval.enabled=sometimes", "eval.enabled"),
        ("data.path=42", "data.path"),
        ("tracking.uri=5", "tracking.uri"),
        ("tracking.experiment=''", "tracking.experiment"),
        ("eval.classifier=7", "eval.classifier"),
        ("tracking.log_models=1", "tracking.log_models"),
    ],
)
def test_validate_names_the_bad_key(override, key):
    from ganlab.gan import choices

    with pytest.raises(InputError, match=f"^{key}: got"):
        config.typed_config(compose_train([override]), choices.registries())


def test_an_unresolvable_interpolation_names_its_key():
    with pytest.raises(InputError, match=r"^epochs: cannot be resolved"):
        config.validate(compose_train(["epochs=${oc.env:GANLAB_NO_SUCH_VARIABLE}"]))


def test_registering_needs_the_logged_model():
    config.validate(compose_train(["tracking.register_model=mnist-gan"]))
    config.validate(compose_train(["tracking.log_models=false"]))
    with pytest.raises(InputError, match="^tracking.register_model: got 'mnist-gan' .* with tracking.log_models=false"):
        config.validate(compose_train(["tracking.register_model=mnist-gan", "tracking.log_models=false"]))


def test_ema_objective_needs_ema():
    config.validate(compose_train(["ema=0.999", "objective=ema_fid"]))
    with pytest.raises(InputError, match="^objective: got 'ema_fid'"):
        config.validate(compose_train(["objective=ema_fid"]))


def test_batch_size_above_training_set_is_rejected():
    cfg = compose_train(["batch_size=5000"])
    config.validate(cfg)
    with pytest.raises(InputError, match="batch_size: got 5000.*only 2000"):
        config.validate_against_data(cfg, 2000)


def test_bf16_runs_hidden_layers_in_bfloat16_and_keeps_outputs_float32():
    from ganlab.gan.models import build_nets

    cfg = compose_train(["dtype=bf16"])
    for net in build_nets(cfg, (28, 28)):
        dense = [layer for layer in net.layers if layer.__class__.__name__ == "Dense"]
        assert all(layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32" for layer in dense[:-1])
        assert dense[-1].compute_dtype == "float32"
        assert net(np.zeros((2, net.input_shape[-1]), np.float32)).dtype == "float32"


def test_baseline_experiment_is_the_tutorial_scored_every_epoch():
    cfg = compose_train(["experiment=baseline"])
    config.validate(cfg)
    assert (cfg.seed, cfg.epochs, cfg.batch_size, cfg.dropout, cfg.label_smoothing) == (10, 50, 128, 0.3, 0.1)
    assert cfg.dtype == "fp32" and cfg.eval.every == 1 and cfg.tracking.experiment == "baseline"
    assert cfg.optimizer.lr == 2e-4


def test_evaluation_objective_needs_evaluation():
    with pytest.raises(InputError, match="objective: fid is an evaluation score, but eval.enabled is false"):
        config.validate(compose_train(["eval.enabled=false"]))
    config.validate(compose_train(["eval.enabled=false", "objective=g_loss"]))


def test_eval_repeats_has_a_documented_cap():
    config.validate(compose_train([f"eval.repeats={config.MAX_EVAL_REPEATS}"]))
    with pytest.raises(InputError, match=rf"eval.repeats: got 1000 \(int\); expected an integer >= 1 and <= {config.MAX_EVAL_REPEATS}"):
        config.validate(compose_train(["eval.repeats=1000"]))


@pytest.mark.parametrize("overrides, refused", [
    (["+loss.gp_weight=5", "loss=hinge"], "the loss option 'hinge' has no key 'gp_weight'"),
    (["+model.extra_units=[4]"], "the model option 'chosen by default' has no key 'extra_units'"),
    (["++loss.gp_weight=5", "loss=hinge"], "the loss option 'hinge' has no key 'gp_weight'"),
    (["++nope=1"], "nope is not a ganlab knob"),
    (["+extra.key=1"], "extra.key is not a ganlab knob"),
])
def test_a_key_a_groups_schema_lacks_is_refused_with_plus_and_double_plus(overrides, refused):
    with pytest.raises(InputError, match=refused):
        config.refuse_new_keys(overrides)


@pytest.mark.parametrize("overrides", [
    ["++loss.gp_weight=5", "loss=wgan_gp"], ["++epochs=3"], ["++model.generator_units=[8,8,8]"],
    ["+experiment=baseline"], ["+hydra.job.env_set.X=1"],
])
def test_a_key_the_schema_has_may_be_forced(overrides):
    config.refuse_new_keys(overrides)


def test_an_unresolvable_value_of_a_job_key_is_refused_with_the_tracking_keys_to_record_it():
    from ganlab.gan import choices

    cfg = compose_train(["loss=wgan_gp"])
    OmegaConf.update(cfg, "loss.n_critic", "${oc.env:GANLAB_TEST_NOPE}")
    with pytest.raises(config.RefusedConfig, match=r"loss.n_critic: cannot be resolved") as refused:
        config.typed_config(cfg, choices.registries())
    assert refused.value.tracking.experiment == "ganlab"  # where its FAILED run goes


def test_a_hydra_value_that_can_never_resolve_is_one_line_before_hydra_starts():
    line = config.unresolvable_hydra_value(["epochs=1", "hydra.run.dir=${oc.env:GANLAB_TEST_NOPE}"])
    assert line.startswith("hydra.run.dir: cannot be resolved (InterpolationResolutionError")
    for fine in ("hydra.run.dir=outputs/${now:%Y}", "hydra.run.dir=${hydra.job.name}", "hydra.run.dir=plain",
                 "epochs=${oc.env:GANLAB_TEST_NOPE}"):  # Hydra's own resolvers and other keys; job keys are the job's
        assert config.unresolvable_hydra_value([fine]) is None, fine

"""The config's one pass: composed by Hydra, then resolved, checked and typed once (`config.typed_config`)."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO
from ganlab.core import config
from ganlab.core.errors import InputError
from ganlab.core.job_config import JobConfig


def compose_train(overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)


@pytest.fixture(scope="module")
def registries():
    from ganlab.gan import choices

    return choices.registries()


def test_the_typed_config_is_the_composed_one_frozen(registries):
    cfg = compose_train(["loss=wgan_gp", "epochs=3"])
    job = config.typed_config(cfg, registries)
    assert isinstance(job, JobConfig) and job.as_dict() == config.resolved(cfg)  # what config.yaml and the params hold
    assert (job.epochs, job.loss.name, job.loss.n_critic, job.loss.gp_weight, job.label_smoothing) == (3, "wgan_gp", 5, 10.0, None)
    assert job.model.generator_units == (256, 512, 1024) and job.loss.get("nope") is None
    assert job.steps_for(60000) == 469 and job.eval.repeats == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.epochs = 4
    with pytest.raises(AttributeError, match="no setting 'nope'"):
        _ = job.model.nope


def test_a_refused_key_carries_the_checked_tracking_keys(registries):
    """A refusal the job records in a FAILED run: where that run goes is already checked."""
    with pytest.raises(config.RefusedConfig, match="^dropout: got 1.5") as refused:
        config.typed_config(compose_train(["dropout=1.5", "tracking.experiment=elsewhere"]), registries)
    assert refused.value.tracking.experiment == "elsewhere"
    with pytest.raises(InputError, match="^tracking.experiment: got") as bad_store:  # no run can hold this one
        config.typed_config(compose_train(["dropout=1.5", "tracking.experiment=../x"]), registries)
    assert not isinstance(bad_store.value, config.RefusedConfig)


def test_group_names_are_checked_against_the_registries_handed_in(registries):
    cfg = compose_train(["loss.name=nope"])
    config.validate(cfg)  # core alone knows no choices (it never imports the gan wing)
    with pytest.raises(InputError, match="^loss.name: got 'nope'; known choices: ns, hinge"):
        config.typed_config(cfg, registries)


def test_a_config_without_a_key_is_refused_naming_it():
    values = config.resolved(compose_train())
    with pytest.raises(InputError, match="^seed: missing from the config"):
        JobConfig.of({key: value for key, value in values.items() if key != "seed"})
    with pytest.raises(InputError, match=r"^eval.sometimes: not a key of the eval group"):
        JobConfig.of({**values, "eval": {**values["eval"], "sometimes": 1}})

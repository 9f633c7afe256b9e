"""The real CLI in a subprocess: a short training run, and bad input refused before training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import FIXTURE_MNIST, QUICK, all_runs, artifact_paths, run_cli, store_client

TRAINING_METRICS = {"d_loss", "g_loss", "d_real", "d_fake", "steps_per_sec"}
EVALUATION_METRICS = {"fid", "fid_logits", "classifier_score", "kid", "kid_std", "precision", "recall",
                      "density", "coverage", "modes_covered", "kl_uniform"}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("short_run")
    args = [*QUICK, "epochs=2", "steps_per_epoch=20", "dropout=0.1", "label_smoothing=0.2", "eval.every=1"]
    result = run_cli(args, cwd, tell_if_tensorflow_loaded=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output_dir = Path(re.search(r"job outputs in (\S+)", result.stdout).group(1))
    return cwd, result, output_dir


def test_short_run_writes_models_and_pictures(short_run):
    cwd, result, output_dir = short_run
    assert output_dir.is_relative_to(cwd / "outputs" / "runs")
    for name in ("models/generator.keras", "models/discriminator.keras", "samples.png", "loss_curve.png",
                 "samples/epoch_001.png", "samples/epoch_002.png", "config.yaml", "train.log"):
        assert (output_dir / name).stat().st_size > 0, name
    assert re.search(r"trained 2 epochs \(40 steps\) in .* steps/s", result.stdout)
    # the job says how to look at it: with ganlab's app, whose page opens the experiment for model training
    assert re.search(r"mlflow ui --backend-store-uri sqlite:///\S+ --port \d+ --app-name ganlab ", result.stdout)
    # TensorFlow loaded without scikit-learn, which Keras would import for nothing (ganlab.core.runtime)
    assert result.stdout.splitlines()[-2:] == ["scikit-learn loaded: False", "tensorflow loaded: True"]


def test_saved_discriminator_has_the_requested_dropout(short_run):
    import keras

    _, _, output_dir = short_run
    discriminator = keras.models.load_model(output_dir / "models" / "discriminator.keras")
    rates = [layer.rate for layer in discriminator.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.1, 0.1, 0.1]
    generator = keras.models.load_model(output_dir / "models" / "generator.keras")
    assert generator.output_shape == (None, 784)


def test_one_finished_run_with_params_tags_metrics_and_artifacts(short_run):
    cwd, _, _ = short_run
    runs = all_runs(cwd)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["dropout"] == "0.1" and "model.dropout" not in params
    assert params["label_smoothing"] == "0.2" and params["optimizer.lr"] == "0.0002"
    assert params["steps_per_epoch"] == "20" and params["data.path"] == str(FIXTURE_MNIST)
    tags = run.data.tags
    for tag in ("git.commit", "git.dirty", "version.python", "version.tensorflow", "version.keras",
                "version.mlflow", "version.hydra-core", "data.sha256"):
        assert tags[tag], tag
    assert "dropout=0.1" in tags["hydra.overrides"]
    client = store_client(cwd)
    for metric in TRAINING_METRICS | EVALUATION_METRICS:
        history = client.get_metric_history(run.info.run_id, metric)
        assert [point.step for point in history] == [1, 2], metric
    assert 1 <= run.data.metrics["modes_covered"] <= 10
    artifacts = artifact_paths(client, run.info.run_id)
    assert {"config.yaml", "loss_curve.png", "samples.png", "samples/epoch_001.png", "samples/epoch_002.png",
            "models/generator.keras", "train.log", "classes/epoch_002.png"} <= artifacts
    # QUICK's tracking.log_models=false: the .keras files above, but no MLflow Model (the dcgan job logs them)
    assert not run.outputs.model_outputs and not client.search_logged_models([run.info.experiment_id])


# Bad values: refused before any training and before TensorFlow loads (no start-up paid for a typo), with a
# FAILED run that says why. One value per place it is checked (the config; the data file; the config against
# the data); every key's message is checked in-process (test_config.py::test_validate_names_the_bad_key, test_data.py).
BAD_VALUES = [
    ("epochs=abc", "epochs: got 'abc' (str); expected an integer >= 0"),
    ("data.path=pyproject.toml", "cannot be read as a .npz archive"),
    ("batch_size=100000", "batch_size: got 100000, but the training set holds only"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_bad_value_exits_nonzero_with_a_failed_run(workdir, override, message):
    (workdir / "pyproject.toml").write_text("[not] = 'an npz'\n")
    result = run_cli([*QUICK, override], workdir, tell_if_tensorflow_loaded=True)
    assert result.returncode != 0
    assert result.stdout.splitlines()[-1] == "tensorflow loaded: False"
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    runs = all_runs(workdir)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert message in runs[0].data.tags["failure_reason"]
    assert "d_loss" not in runs[0].data.metrics  # refused before any training


# Hydra refuses every group alike (each group's choices:
# test_choices.py::test_an_unknown_name_is_refused_with_the_known_ones).
BAD_CHOICES = [("data=cifar10", "data")]


@pytest.mark.parametrize(("override", "group"), BAD_CHOICES, ids=[case[0] for case in BAD_CHOICES])
def test_unknown_group_choice_lists_the_valid_ones(workdir, override, group):
    result = run_cli([*QUICK, override], workdir)
    assert result.returncode != 0
    assert f"Could not find '{group}/" in result.stderr and "Available options" in result.stderr
    assert all_runs(workdir) == []  # composition failed: nothing was started


def test_help_is_ganlabs_own(workdir):
    result = run_cli(["--help"], workdir)
    assert result.returncode == 0
    for word in ("dropout", "label_smoothing", "data.path", "mlflow", "--cfg job --resolve", "fashion_mnist"):
        assert word in result.stdout, word
    assert "powered by Hydra" not in result.stdout


def test_the_console_is_quiet_and_ends_with_how_to_look(dcgan_job):
    """conftest's dcgan job, run at the TensorFlow log level a fresh shell gets (its TensorFlow noise:
    test_fresh_machine.py): no MLflow start-up lines, and the last two lines say how to look at the run."""
    import shlex
    import sys

    _, result = dcgan_job
    console = result.stdout + result.stderr
    assert "cuInit" not in console and "cudart" not in console and "absl::InitializeLog" not in console
    assert "Creating initial MLflow database tables" not in console
    last = result.stdout.strip().splitlines()[-2:]
    command = shlex.split(last[0].strip().removeprefix("look at it: "), comments=True)  # quoted, so it can be pasted
    assert command[0] in (str(Path(sys.executable).parent / "mlflow"), "mlflow")  # this interpreter's own mlflow
    assert command[1:3] == ["ui", "--backend-store-uri"] and command[3].startswith("sqlite:///")
    assert last[1].strip().startswith("then open http://127.0.0.1:5000/#/experiments/")


def test_unresolvable_values_in_a_sweep_and_in_hydra_keys_are_one_line_and_nothing_is_started(workdir):
    result = run_cli(["hydra.run.dir=${oc.env:GANLAB_TEST_NOPE}", *QUICK], workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: hydra.run.dir: cannot be resolved")

    # In a sweep, the jobs' values are checked before any job or run exists (tests/test_sweep_precheck.py).
    sweep = run_cli(["-m", "epochs=${oc.env:GANLAB_TEST_NOPE}", "dropout=0.1,0.3", *QUICK[1:]], workdir)
    assert sweep.returncode == 1 and "Traceback" not in sweep.stderr, sweep.stderr[-3000:]
    (line,) = sweep.stderr.strip().splitlines()
    assert line.startswith("error: epochs: cannot be resolved") and "Nothing was started" in line
    assert all_runs(workdir) == []

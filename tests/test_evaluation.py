"""Evaluator and the evaluate CLI on real fixture digits: score behaviour, caching, errors."""

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_MNIST, REPO, new_store
from ganlab.evaluation import classifier as clf
from ganlab import evaluate
from ganlab.core import scores
from ganlab.evaluation import evaluator as evaluation_module
from ganlab.core.data import load_dataset, to_unit_range
from ganlab.core.errors import InputError
from ganlab.evaluation.evaluator import Evaluator
from ganlab.core.scores import SCORE_NAMES, rescore

ROOT, FIXTURE = REPO, FIXTURE_MNIST
FAST_KID = {"kid_subsets": 10, "kid_subset_size": 200}


@pytest.fixture(scope="module")
def small_mnist():
    return load_dataset("mnist", str(FIXTURE))


@pytest.fixture(scope="module")
def classifier():
    return clf.load()


@pytest.fixture(scope="module")
def evaluator(small_mnist, classifier, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return Evaluator.from_dataset(small_mnist, classifier=classifier, cache_dir=cache, **FAST_KID)


def balanced_real(dataset, n=1000):
    """n held-out real digits (the fixture's training split), in [-1, 1]."""
    return to_unit_range(dataset.x_train[:n])


def test_scores_are_the_documented_metric_names(evaluator, small_mnist):
    evaluation = evaluator.evaluate(balanced_real(small_mnist))
    assert tuple(evaluation.scores) == SCORE_NAMES
    assert all(isinstance(value, float) for value in evaluation.scores.values())
    assert evaluation.histogram.shape == (10,) and evaluation.histogram.sum() == 1000


def test_scores_are_paired_with_their_names_whatever_the_registry_order(evaluator, small_mnist, monkeypatch):
    images = balanced_real(small_mnist, n=500)
    expected = evaluator.score(images)
    reordered = tuple(reversed(SCORE_NAMES))
    monkeypatch.setattr(scores, "SCORE_NAMES", reordered)
    monkeypatch.setattr(evaluation_module, "SCORE_NAMES", reordered, raising=False)  # where an older evaluator kept it
    found = evaluator.score(images)
    assert tuple(found) == reordered  # reported in the registry's order...
    assert found == expected  # ...but each name keeps its own value
    assert found["modes_covered"] == 10.0 and found["classifier_score"] > 9.0 and found["kl_uniform"] < 0.05


def test_generated_images_are_scored_alike_in_every_layout(evaluator, small_mnist):
    flat = balanced_real(small_mnist, n=500)
    expected = evaluator.score(flat)
    for layout in ((500, 28, 28), (500, 28, 28, 1)):  # a dense generator's output, and a convolutional one's
        assert evaluator.score(flat.reshape(layout)) == expected, layout
    with pytest.raises(InputError, match=r"shape \(500, 392, 2\); expected \(N, 784\), \(N, 28, 28\) or \(N, 28, 28, 1\)"):
        evaluator.score(flat.reshape(500, 392, 2))


def test_real_digits_score_well(evaluator, small_mnist):
    scores = evaluator.score(balanced_real(small_mnist))
    assert scores["modes_covered"] == 10
    assert scores["kl_uniform"] < 0.02
    assert scores["classifier_score"] > 9.0
    assert scores["precision"] > 0.6 and scores["recall"] > 0.6
    assert scores["coverage"] > 0.8


def test_one_digit_class_is_a_collapsed_generator(evaluator, small_mnist):
    ones = to_unit_range(small_mnist.x_train[small_mnist.y_train == 1])
    collapsed = evaluator.score(ones)
    balanced = evaluator.score(balanced_real(small_mnist, n=len(ones)))
    assert collapsed["modes_covered"] == 1
    assert collapsed["kl_uniform"] > 2.0  # log(10) = 2.30 for a single class
    assert collapsed["fid"] > 10 * balanced["fid"]
    assert collapsed["fid_logits"] > 10 * balanced["fid_logits"]
    assert collapsed["recall"] < 0.3 < balanced["recall"]


def test_noise_is_neither_precise_nor_covering(evaluator):
    noise = np.random.default_rng(0).uniform(-1, 1, size=(1000, 784)).astype(np.float32)
    scores = evaluator.score(noise)
    assert scores["precision"] < 0.05 and scores["recall"] < 0.05
    assert scores["density"] < 0.05 and scores["coverage"] < 0.05


def test_too_few_samples_is_a_clear_error(evaluator, small_mnist):
    with pytest.raises(InputError, match="too few"):
        evaluator.score(balanced_real(small_mnist, n=100))


def test_real_statistics_are_cached_and_reused(small_mnist, classifier, tmp_path, monkeypatch):
    first = Evaluator.from_dataset(small_mnist, classifier=classifier, cache_dir=tmp_path, **FAST_KID)
    assert not first.cache_hit and first.cache_path.is_file()
    written = first.cache_path.stat().st_mtime_ns

    forward_passes = []
    original = classifier.features_and_logits

    def counting_forward(images):
        forward_passes.append(len(images))
        return original(images)

    monkeypatch.setattr(classifier, "features_and_logits", counting_forward)
    second = Evaluator.from_dataset(small_mnist, classifier=classifier, cache_dir=tmp_path, **FAST_KID)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert forward_passes == []  # the real images were not run through the classifier again
    assert second.cache_path.stat().st_mtime_ns == written

    images = balanced_real(small_mnist, n=500)
    assert second.score(images) == first.score(images)


def flock_waiter_on(path) -> bool:
    """True if some process waits, blocked, for an flock on the file `path` (/proc/locks lists it with `->`)."""
    inode = os.stat(path).st_ino
    return any("->" in line and "FLOCK" in line and line.split()[-3].endswith(f":{inode}")
               for line in Path("/proc/locks").read_text().splitlines())


def test_jobs_starting_together_on_a_cold_cache_compute_the_statistics_once(small_mnist, classifier, tmp_path, caplog):
    """A second evaluator says it waits while the first computes, then reads the first one's file (cache_hit)."""
    caplog.set_level(logging.INFO, logger=evaluation_module.__name__)
    computed = Evaluator.from_dataset(small_mnist, classifier=classifier, cache_dir=tmp_path / "elsewhere", **FAST_KID)
    cache = tmp_path / "cache"
    cache.mkdir()
    lock_file = cache / f"{computed.cache_path.stem}.lock"
    with open(lock_file, "a") as held:  # this test is the first job, computing
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = {}
        second = threading.Thread(target=lambda: waiting.setdefault("evaluator", Evaluator.from_dataset(
            small_mnist, classifier=classifier, cache_dir=cache, **FAST_KID)))
        second.start()
        while not flock_waiter_on(lock_file):
            assert second.is_alive(), "the second evaluator did not wait for the statistics being computed"
            time.sleep(0.01)
        shutil.copy(computed.cache_path, cache / computed.cache_path.name)  # the first job's file appears
    second.join()
    assert waiting["evaluator"].cache_hit
    assert f"another process is computing the real statistics for {cache / computed.cache_path.name}" in caplog.text
    assert np.array_equal(waiting["evaluator"].real.mu, computed.real.mu)


def test_cache_key_changes_with_the_real_set(small_mnist, classifier, tmp_path):
    full = Evaluator(small_mnist.x_test, classifier=classifier, cache_dir=tmp_path, **FAST_KID)
    half = Evaluator(small_mnist.x_test[:1000], classifier=classifier, cache_dir=tmp_path, **FAST_KID)
    assert full.cache_path != half.cache_path and not half.cache_hit


def test_cache_is_invalidated_when_the_classifier_changes(small_mnist, classifier, tmp_path):
    shipped = Evaluator.from_dataset(small_mnist, classifier=classifier, cache_dir=tmp_path / "cache", **FAST_KID)

    # Retrain-lite: perturb a copy of the weights and save it, which re-hashes the JSON.
    network = clf.build_network()
    network.load_weights(clf.DEFAULT_WEIGHTS)
    kernel = network.get_layer("features").kernel
    kernel.assign(kernel.numpy() * 1.01)
    record = dict(classifier.info)
    del record["weights_sha256"]
    clf.save(network, tmp_path / "perturbed.weights.h5", record)
    perturbed = clf.load(tmp_path / "perturbed.weights.h5")
    assert perturbed.sha256 != classifier.sha256

    changed = Evaluator.from_dataset(small_mnist, classifier=perturbed, cache_dir=tmp_path / "cache", **FAST_KID)
    assert not changed.cache_hit
    assert changed.cache_path != shipped.cache_path and changed.cache_path.is_file()
    assert not np.allclose(changed.real.mu, shipped.real.mu)


def test_unreadable_cache_file_is_recomputed(small_mnist, classifier, tmp_path):
    first = Evaluator.from_dataset(small_mnist, classifier=classifier, cache_dir=tmp_path, **FAST_KID)
    first.cache_path.write_bytes(b"not an npz")
    again = Evaluator.from_dataset(small_mnist, classifier=classifier, cache_dir=tmp_path, **FAST_KID)
    assert not again.cache_hit
    np.testing.assert_allclose(again.real.mu, first.real.mu)


# ------------------------------------------------------------------ the CLI


def save_untrained_generator(path, random_dim=16):
    import keras

    generator = keras.Sequential([keras.Input((random_dim,)), keras.layers.Dense(784, activation="tanh")])
    generator.save(path)
    return path


def test_cli_scores_a_saved_generator(tmp_path):
    generator = save_untrained_generator(tmp_path / "generator.keras")
    env = {**os.environ, "GANLAB_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "ganlab.evaluate", "--generator", str(generator),
               "--data", str(FIXTURE), "--num-samples", "300"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "300 samples (seed 0) of" in lines[0]
    for name in SCORE_NAMES:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "predicted classes" in result.stdout


def test_cli_refuses_a_dataset_its_classifier_was_not_trained_on(tmp_path, capsys, monkeypatch):
    """As training does: the shipped digit classifier does not score Fashion-MNIST (before any data is read).
    In-process: the CLI's own entry point runs in test_cli_scores_a_saved_generator."""
    monkeypatch.setenv("GANLAB_CACHE_DIR", str(tmp_path / "cache"))
    generator = save_untrained_generator(tmp_path / "generator.keras")
    assert evaluate.main(["--generator", str(generator), "--dataset", "fashion_mnist",
                          "--data", str(tmp_path / "not-read.npz"), "--num-samples", "300"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (error,) = [line for line in captured.err.splitlines() if line.startswith("error:")]  # one paragraph
    assert error.startswith("error: --weights: the classifier") and "was trained on mnist" in error
    assert "--dataset takes one of mnist, fashion_mnist (default mnist)" in error
    assert "python -m ganlab.classifier --dataset fashion_mnist" in error
    assert not (tmp_path / "cache").exists()  # refused before any statistics


def test_cli_dataset_option_is_checked_for_real_images_and_runs(tmp_path, capsys):
    assert evaluate.main(["--real", "train", "--dataset", "fashion_mnist", "--data", str(FIXTURE)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --weights:") and "--real reads fashion_mnist images" in error
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--real", "train", "--dataset", "cifar10"])
    assert exit_info.value.code == 2 and "choose from 'mnist', 'fashion_mnist'" in capsys.readouterr().err


def test_a_generator_may_output_images_in_any_layout(tmp_path):
    import keras

    dense = keras.layers.Dense(784, activation="tanh")
    flat = keras.Sequential([keras.Input((16,)), dense])
    channel = keras.Sequential([keras.Input((16,)), dense, keras.layers.Reshape((28, 28, 1))])  # the same weights
    expected = evaluate.generate(flat, 300, seed=1)
    np.testing.assert_array_equal(evaluate.generate(channel, 300, seed=1), expected)
    assert expected.reshape(300, 784).tolist() == keras.ops.convert_to_numpy(flat(evaluation_module.evaluation_noise(1, 300, 16))).tolist()
    channel.save(tmp_path / "channel.keras")
    evaluate.load_generator(tmp_path / "channel.keras")
    keras.Sequential([keras.Input((16,)), keras.layers.Dense(10)]).save(tmp_path / "ten.keras")
    with pytest.raises(InputError, match=r"outputs shape \(None, 10\); expected one output of images"):
        evaluate.load_generator(tmp_path / "ten.keras")


def test_cli_missing_generator_exits_with_a_message(tmp_path, capsys):
    # Checked before any data is loaded or real statistics computed.
    code = evaluate.main(["--generator", str(tmp_path / "nope.keras"), "--data", str(FIXTURE)])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --generator:") and "does not exist" in error


def test_cli_run_id_scores_and_logs_into_the_run(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("GANLAB_CACHE_DIR", str(tmp_path / "cache"))
    uri = new_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("test", artifact_location=str(tmp_path / "artifacts")))
    run_id = run.info.run_id
    # What training records: its seed, sample count and data, and a score at each evaluated epoch.
    for key, value in {"seed": 3, "epochs": 2, "eval.num_samples": 300, "data.name": "mnist", "data.path": str(FIXTURE)}.items():
        client.log_param(run_id, key, value)
    for epoch in (1, 2):
        client.log_metric(run_id, "fid", 100.0 / epoch, step=epoch)
    client.log_artifact(run_id, str(save_untrained_generator(tmp_path / "generator.keras")), "models")
    client.set_terminated(run_id)

    args = ["--run-id", run_id, "--tracking-uri", uri]
    assert evaluate.main(args) == 0
    title = capsys.readouterr().out.splitlines()[0]
    assert "at epoch 2: 300 samples (seed 3)" in title and "step 2" in title
    # The training values stay exactly as they were; the re-score sits beside them.
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "fid")] == [(1, 100.0), (2, 50.0)]
    for name in SCORE_NAMES:
        assert [m.step for m in client.get_metric_history(run_id, rescore(name))] == [2], name
    assert evaluate.main(args) == 2  # a second re-score at the same epoch is refused, not logged twice
    assert "already holds a re-score at epoch 2" in capsys.readouterr().err
    assert len(client.get_metric_history(run_id, rescore("fid"))) == 1

    assert evaluate.main(["--run-id", "0" * 32, "--tracking-uri", uri, "--data", str(FIXTURE)]) == 2
    assert "no MLflow run" in capsys.readouterr().err

    assert evaluate.main([*args, "--no-log", "--dataset", "fashion_mnist"]) == 2  # a run is scored on its own dataset
    assert f"--dataset: run {run_id} was trained on mnist (its data.name)" in capsys.readouterr().err
    fashion = client.create_run(run.info.experiment_id).info.run_id
    for key, value in {"seed": 3, "epochs": 2, "data.name": "fashion_mnist", "data.path": str(FIXTURE)}.items():
        client.log_param(fashion, key, value)
    assert evaluate.main(["--run-id", fashion, "--tracking-uri", uri, "--no-log"]) == 2
    assert f"but run {fashion} was trained on fashion_mnist images" in capsys.readouterr().err


def test_cli_refuses_a_missing_tracking_store(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    assert evaluate.main(["--run-id", "abc", "--tracking-uri", uri, "--data", str(FIXTURE)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()

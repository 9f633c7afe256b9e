"""The shipped MNIST classifier: accuracy on held-out real digits, outputs, integrity checks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ganlab.evaluation import classifier as clf
from ganlab.core.data import load_dataset, to_unit_range
from ganlab.core.errors import InputError

FIXTURE = Path(__file__).parent / "fixtures" / "mnist_small.npz"


@pytest.fixture(scope="module")
def classifier():
    return clf.load()


@pytest.fixture(scope="module")
def small_mnist():
    return load_dataset("mnist", str(FIXTURE))


def test_shipped_classifier_is_accurate_on_held_out_digits(classifier, small_mnist):
    # The fixture's test images come from the MNIST test split, never seen in training.
    predicted = classifier.logits(to_unit_range(small_mnist.x_test)).argmax(axis=1)
    assert np.mean(predicted == small_mnist.y_test) >= 0.99


def test_shipped_metadata_matches_weights():
    info = json.loads(clf.metadata_path(clf.DEFAULT_WEIGHTS).read_text())
    assert info["weights_sha256"] == clf.file_sha256(clf.DEFAULT_WEIGHTS)
    assert info["test_accuracy"] >= 0.993 and info["test_images"] == 10000
    assert clf.DEFAULT_WEIGHTS.stat().st_size < 5 * 2**20


def test_outputs_have_the_documented_shapes_and_agree(classifier, small_mnist):
    flat = to_unit_range(small_mnist.x_test[:50])
    features, logits = classifier.features_and_logits(flat)
    assert features.shape == (50, clf.FEATURE_DIM) and features.dtype == np.float32
    assert logits.shape == (50, 10)
    assert np.all(features >= 0)  # ReLU layer
    np.testing.assert_allclose(classifier.features(flat.reshape(50, 28, 28)), features, rtol=1e-5, atol=1e-6)
    probs = classifier.probabilities(flat)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
    assert np.array_equal(probs.argmax(axis=1), logits.argmax(axis=1))


def test_batching_does_not_change_outputs(classifier, small_mnist):
    flat = to_unit_range(small_mnist.x_test[:30])
    small_batches = clf.Classifier(classifier.network, classifier.sha256, classifier.info, batch_size=7)
    np.testing.assert_allclose(small_batches.logits(flat), classifier.logits(flat), rtol=1e-5, atol=1e-5)


def test_wrong_image_shape_is_refused(classifier):
    with pytest.raises(ValueError, match="expected images"):
        classifier.features(np.zeros((4, 27, 27), np.float32))
    with pytest.raises(ValueError, match=r"shape \(4, 392, 2\); expected images in \[-1, 1\] shaped \(N, 784\)"):
        clf.as_image_batch(np.zeros((4, 392, 2), np.float32))  # 784 pixels, but not an image layout


def test_the_input_shape_is_the_datas():
    from ganlab.core.data import IMAGE_SHAPE

    assert clf.INPUT_SHAPE == (*IMAGE_SHAPE, 1)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 784)).astype(np.float32)
    for layout in ((3, 784), (3, 28, 28), (3, 28, 28, 1)):
        np.testing.assert_array_equal(clf.as_image_batch(images.reshape(layout)), images.reshape(3, 28, 28, 1))


def test_a_classifier_of_another_dataset_is_refused_by_name(copied_weights):
    with pytest.raises(clf.DatasetMismatch, match="was trained on mnist, but the job's data is fashion_mnist") as caught:
        clf.check(copied_weights, "fashion_mnist")
    assert (caught.value.trained_on, caught.value.dataset) == ("mnist", "fashion_mnist")
    assert isinstance(caught.value, InputError)  # training's refusal is unchanged
    assert clf.check(copied_weights, "mnist")[0] == copied_weights


@pytest.fixture
def copied_weights(tmp_path):
    weights = tmp_path / clf.DEFAULT_WEIGHTS.name
    shutil.copy(clf.DEFAULT_WEIGHTS, weights)
    shutil.copy(clf.metadata_path(clf.DEFAULT_WEIGHTS), clf.metadata_path(weights))
    return weights


def test_load_refuses_missing_weights(tmp_path):
    with pytest.raises(InputError, match="not found"):
        clf.load(tmp_path / "absent.weights.h5")


def test_load_refuses_missing_metadata(copied_weights):
    clf.metadata_path(copied_weights).unlink()
    with pytest.raises(InputError, match="metadata .* not found"):
        clf.load(copied_weights)


def test_load_refuses_altered_weights(copied_weights):
    data = bytearray(copied_weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copied_weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="altered"):
        clf.load(copied_weights)


def test_copied_weights_load_with_the_same_hash(copied_weights, classifier):
    assert clf.load(copied_weights).sha256 == classifier.sha256

"""The pretrained MNIST classifier behind ganlab's scores: train it, save it, load it.

FID and its relatives compare feature statistics, so they need a network whose features
mean something for digits. Inception (ImageNet) features fit 28x28 greyscale digits
poorly, so ganlab ships a small CNN trained on the MNIST training set; its penultimate
layer (128 ReLU units) gives the FID features and its last layer the 10 class logits.
It takes images in [-1, 1], the generator's output range.

    python -m ganlab.classifier --data /path/to/mnist.npz [--epochs 15] [--seed 0]
    python -m ganlab.classifier --dataset fashion_mnist --data fashion.npz --out fashion.weights.h5

trains it, prints the accuracy on the 10,000 test images and writes
`ganlab/weights/mnist_classifier.weights.h5` with `mnist_classifier.json` beside it
(sha256 of the weights and of the training data, test accuracy, training config,
versions). `load()` refuses weights whose sha256 differs from the JSON: every score
computed with them would silently change meaning. The JSON also names the dataset the
classifier was trained on, and `load(..., dataset=...)` refuses to score another one:
digit features say nothing about Fashion-MNIST samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ganlab.core.data import DATASETS, IMAGE_LAYOUTS_TEXT, IMAGE_SHAPE, file_sha256, is_image_batch, load_dataset, to_unit_range
from ganlab.core.errors import InputError
from ganlab.core.runtime import Deferred

# Loaded (quietly) once a network is built or run, not for `check`: refused weights never wait for TensorFlow.
tf = Deferred("tensorflow")
keras = Deferred("keras")

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "mnist_classifier.weights.h5"
# The sha256 of the weights as shipped: the JSON beside them can be replaced with them, this cannot.
SHIPPED_WEIGHTS_SHA256 = "3481b4b675a0bd7e686d212e5061cc61ac02a9be4a3c78a0357deb9b6b74ade7"
WEIGHTS_SUFFIX = ".weights.h5"
NUM_CLASSES = 10
FEATURE_DIM = 128
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
INPUT_SHAPE = (*IMAGE_SHAPE, 1)  # the data's image shape, one grey channel


def build_network() -> keras.Model:
    """conv32-pool-conv64-pool-conv128-dense128-dense10; outputs (features, logits)."""
    images = keras.Input(INPUT_SHAPE, name="images")
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(images)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(128, 3, activation="relu", name="conv3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.3, name="dropout1")(x)
    features = keras.layers.Dense(FEATURE_DIM, activation="relu", name="features")(x)
    x = keras.layers.Dropout(0.3, name="dropout2")(features)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(images, [features, logits], name="mnist_classifier")


def architecture_summary(network: keras.Model) -> list[str]:
    """One line per layer: name, class, output shape (recorded in the JSON)."""
    lines = []
    for layer in network.layers:
        shape = tuple(layer.output.shape[1:])
        lines.append(f"{layer.name}: {type(layer).__name__} -> {shape}")
    return lines


def as_image_batch(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] in any of data.IMAGE_LAYOUTS ((N, 784), (N, 28, 28), (N, 28, 28, 1))
    -> float32 (N, *INPUT_SHAPE)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        raise ValueError(
            "classifier input is uint8 grey levels; scale it to [-1, 1] first "
            "(ganlab.core.data.to_unit_range), as the generator's output is."
        )
    if not is_image_batch(images.shape):
        raise ValueError(
            f"classifier input has shape {images.shape}; expected images in [-1, 1] shaped {IMAGE_LAYOUTS_TEXT}."
        )
    return images.reshape((len(images), *INPUT_SHAPE)).astype(np.float32, copy=False)


class Classifier:
    """A loaded classifier: features (FID space), logits and probabilities for images in [-1, 1]."""

    def __init__(self, network: keras.Model, sha256: str, info: dict, batch_size: int = 2000):
        self.network = network
        self.sha256 = sha256  # of the weights file: part of every cache key built on it
        self.info = info
        self.batch_size = batch_size
        self.feature_dim = int(network.outputs[0].shape[-1])
        # One traced graph for every batch (input_signature fixes it), inference mode.
        self._forward = tf.function(
            lambda x: network(x, training=False),
            input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)],
            autograph=False,  # plain graph tracing; nothing here needs Python control flow
        )

    def features_and_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass: float32 features (N, 128) and logits (N, 10)."""
        batch = as_image_batch(images)
        features, logits = [], []
        for start in range(0, len(batch), self.batch_size):
            f, z = self._forward(tf.constant(batch[start : start + self.batch_size]))
            features.append(f.numpy())
            logits.append(z.numpy())
        if not features:
            return np.zeros((0, self.feature_dim), np.float32), np.zeros((0, NUM_CLASSES), np.float32)
        return np.concatenate(features), np.concatenate(logits)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.features_and_logits(images)[0]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.features_and_logits(images)[1]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum so exp cannot overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def metadata_path(weights_path: str | Path) -> Path:
    """mnist_classifier.weights.h5 -> mnist_classifier.json (same folder)."""
    weights_path = Path(weights_path)
    name = weights_path.name
    stem = name[: -len(WEIGHTS_SUFFIX)] if name.endswith(WEIGHTS_SUFFIX) else weights_path.stem
    return weights_path.with_name(stem + ".json")


class DatasetMismatch(InputError):
    """Weights trained on one dataset, asked to score another. The message speaks to a training
    job (`eval.classifier`); a CLI catches this and names its own options instead."""

    def __init__(self, weights_path: Path, trained_on: str, dataset: str):
        self.weights_path, self.trained_on, self.dataset = weights_path, trained_on, dataset
        super().__init__(
            f"eval.classifier: {str(weights_path)!r} was trained on {trained_on}, but the job's data is {dataset}; "
            f"its scores would mean nothing. Train a classifier on {dataset} ({train_command(dataset)}) and pass "
            f"eval.classifier=/path/to/{dataset}_classifier.weights.h5, or set eval.enabled=false."
        )


def train_command(dataset: str) -> str:
    """The command that trains a classifier on `dataset`, quoted for a message."""
    return (f"`python -m ganlab.classifier --dataset {dataset} --data /path/to/{dataset}.npz "
            f"--out {dataset}_classifier.weights.h5`")


def check(weights_path: str | Path | None = None, dataset: str | None = None) -> tuple[Path, str, dict]:
    """(weights path, sha256, metadata) after checking the weights' sha256 against the JSON
    beside them and, when `dataset` is given, that they were trained on it (DatasetMismatch
    if not). Builds nothing."""
    weights_path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    json_path = metadata_path(weights_path)
    retrain = "python -m ganlab.classifier --data /path/to/mnist.npz"
    if not weights_path.is_file():
        raise InputError(
            f"classifier weights {str(weights_path)!r} not found. The package ships them at "
            f"{str(DEFAULT_WEIGHTS)!r}; restore that file from version control or retrain "
            f"with `{retrain}`."
        )
    if not json_path.is_file():
        raise InputError(
            f"classifier metadata {str(json_path)!r} not found; it must sit beside "
            f"{weights_path.name} and record its sha256. Restore both files or retrain with `{retrain}`."
        )
    try:
        info = json.loads(json_path.read_text())
        expected = info["weights_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(
            f"classifier metadata {str(json_path)!r} is not valid: expected a JSON object with "
            f"a 'weights_sha256' key ({error}). Restore it or retrain with `{retrain}`."
        ) from error
    actual = file_sha256(weights_path)
    if actual != expected:
        raise InputError(
            f"classifier weights {str(weights_path)!r} were altered: their sha256 is {actual} "
            f"but {json_path.name} records {expected}. Scores from other weights are not "
            f"comparable; restore the shipped files or retrain with `{retrain}` (which rewrites both)."
        )
    if weights_path.resolve() == DEFAULT_WEIGHTS.resolve() and actual != SHIPPED_WEIGHTS_SHA256:
        raise InputError(
            f"classifier weights {str(weights_path)!r} were altered: their sha256 is {actual}, not the shipped "
            f"{SHIPPED_WEIGHTS_SHA256} (ganlab.evaluation.classifier.SHIPPED_WEIGHTS_SHA256), although {json_path.name} "
            "agrees with them. Restore the shipped files from version control, or put retrained weights "
            "elsewhere and pass eval.classifier=/path/to/them."
        )
    trained_on = info.get("dataset", "mnist")  # weights from before the JSON named a dataset were MNIST's
    if dataset is not None and trained_on != dataset:
        raise DatasetMismatch(weights_path, trained_on, dataset)
    return weights_path, actual, info


def load(weights_path: str | Path | None = None, dataset: str | None = None) -> Classifier:
    """The checked classifier (see `check`), built and loaded."""
    weights_path, actual, info = check(weights_path, dataset)
    retrain = "python -m ganlab.classifier --data /path/to/mnist.npz"
    network = build_network()
    try:
        network.load_weights(weights_path)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(
            f"classifier weights {str(weights_path)!r} do not fit the network built by "
            f"ganlab.evaluation.classifier.build_network ({error}). Retrain with `{retrain}`."
        ) from error
    return Classifier(network, actual, info)


def save(network: keras.Model, weights_path: str | Path, record: dict) -> dict:
    """Write the weights and the JSON (record + the weights' sha256); return the JSON dict."""
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    network.save_weights(weights_path)
    info = {"weights_file": weights_path.name, "weights_sha256": file_sha256(weights_path), **record}
    metadata_path(weights_path).write_text(json.dumps(info, indent=2) + "\n")
    return info


def augmentation(seed: int) -> keras.Sequential:
    """Light, label-preserving jitter: shifts up to ~2 pixels, rotations up to ~11 degrees."""
    background = -1.0  # black in [-1, 1]
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.03, fill_mode="constant", fill_value=background, seed=seed),
            keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", fill_value=background, seed=seed + 1),
        ],
        name="augmentation",
    )


def train(
    data_path: str | None = None,
    dataset_name: str = "mnist",
    epochs: int = 15,
    seed: int = 0,
    weights_path: str | Path = DEFAULT_WEIGHTS,
    batch_size: int = BATCH_SIZE,
    verbose: int = 2,
) -> dict:
    """Train on the dataset's training set, score its test set, save weights + JSON; return the JSON."""
    keras.utils.set_random_seed(seed)
    dataset = load_dataset(dataset_name, data_path)
    x_train = as_image_batch(to_unit_range(dataset.x_train))
    x_test = as_image_batch(to_unit_range(dataset.x_test))

    network = build_network()
    images = keras.Input(INPUT_SHAPE)
    trainer = keras.Model(images, network(augmentation(seed)(images))[1])
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=steps)
    trainer.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    trainer.fit(x_train, dataset.y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - start

    classifier = Classifier(network, sha256="unsaved", info={})
    predicted = classifier.logits(x_test).argmax(axis=1)
    accuracy = float(np.mean(predicted == dataset.y_test))
    record = {
        "test_accuracy": accuracy,
        "test_images": len(x_test),
        "dataset": dataset_name,
        "data_sha256": dataset.sha256(),
        "data_source": dataset.source,
        "input_range": [-1.0, 1.0],
        "feature_layer": "features",
        "feature_dim": FEATURE_DIM,
        "training": {
            "epochs": epochs,
            "seed": seed,
            "batch_size": batch_size,
            "optimizer": f"Adam, learning rate {LEARNING_RATE} with cosine decay to 0",
            "augmentation": "random rotation up to 0.03 turn, random shift up to 8%",
            "seconds": round(seconds, 1),
        },
        "architecture": architecture_summary(network),
        "parameters": int(network.count_params()),
        "versions": {
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    return save(network, weights_path, record)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ganlab.classifier",
        description="Train the classifier that ganlab's scores use (the MNIST one ships in the package).",
    )
    parser.add_argument("--data", default=None, help="MNIST .npz (Keras layout) or IDX folder; default: keras.datasets, else the shipped MNIST copy")
    parser.add_argument("--dataset", default="mnist", choices=DATASETS, help="what the data is (recorded in the JSON)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="weights file to write (JSON goes beside it)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        info = train(args.data, args.dataset, args.epochs, args.seed, args.out, args.batch_size)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"test accuracy {info['test_accuracy']:.4f} on {info['test_images']} images; "
        f"trained {info['training']['seconds']:.0f} s; wrote {args.out} "
        f"(sha256 {info['weights_sha256'][:12]}...) and {metadata_path(args.out).name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

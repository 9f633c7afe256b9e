"""MNIST-shaped image data: from the Keras cache/download or a local file, checked.

`load_dataset(name, path)` returns uint8 images (N, *IMAGE_SHAPE), i.e. (N, 28, 28), and
labels (N,) for the training and test splits. `path=None` goes through `keras.datasets`
(its cache, else a download); for MNIST, when neither works (no network), the copy shipped
in `ganlab/datasets/` is read instead, its SHA-256 checked, and the log says so in one
line. The source is decided once per machine: a failed download leaves a marker beside the
Keras cache (`<Keras home>/datasets/.ganlab-<name>-download-failed`), and later jobs go
straight to the shipped copy until the marker is a day old (`RETRY_DOWNLOAD_AFTER_S`), or
`data.download=true` asks for a try now (`false`: never download). A path is either a `.npz` in the Keras layout (`x_train`, `y_train`, `x_test`,
`y_test`) or a folder with the four IDX files of the original distribution, raw or
gzipped. Whatever the source, the arrays are checked before anyone trains on them.

`IMAGE_SHAPE` is the one home of the image size: the classifier, the evaluator, the
pictures and the scoring CLI derive theirs from it (or from the arrays they are given),
and accept a batch of images in any of the layouts a generator may output (`as_images`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import socket
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganlab.core.errors import InputError

log = logging.getLogger(__name__)

DATASETS = ("mnist", "fashion_mnist")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {  # key -> accepted file names (the original, and a common variant)
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
IMAGE_SHAPE = (28, 28)  # (height, width) of every image ganlab reads, generates and scores
IMAGE_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
# The layouts a batch of N images may come in: flat (a dense generator), square, or with one channel (a conv one).
IMAGE_LAYOUTS = ((IMAGE_PIXELS,), IMAGE_SHAPE, (*IMAGE_SHAPE, 1))
IMAGE_LAYOUTS_TEXT = "{}, {} or {}".format(*(f"(N, {', '.join(map(str, layout))})" for layout in IMAGE_LAYOUTS))
KERAS_CACHE = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist"}  # under <Keras home>/datasets/
# The copy shipped inside the package (see its README.md: layout, source, licence), for machines without internet.
SHIPPED = {"mnist": Path(__file__).resolve().parents[1] / "datasets" / "mnist.npz"}
SHIPPED_MNIST_SHA256 = "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"
SHIPPED_SHA256 = {"mnist": SHIPPED_MNIST_SHA256}
DOWNLOAD_TIMEOUT_S = 30  # a stalled connection gives up after this long, so an offline machine falls back soon
RETRY_DOWNLOAD_AFTER_S = 24 * 3600  # a failed download is tried again only this long after (or with data.download=true)
FAILED_MARKER = ".ganlab-{name}-download-failed"  # in <Keras home>/datasets/: when and why the last download failed


def keras_datasets_folder() -> Path:
    """Where Keras caches its datasets (and ganlab notes a failed download): <KERAS_HOME or ~/.keras>/datasets."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


@dataclass(frozen=True)
class Dataset:
    """Train and test splits as loaded: uint8 images (N, *IMAGE_SHAPE), integer labels 0-9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    name: str = "mnist"  # which dataset this is (mnist or fashion_mnist)

    def sha256(self) -> str:
        """Hash of all four arrays: names the exact data a run or a cache used."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def location(self) -> str:
        """The file or folder the data was read from; for keras.datasets, where Keras caches it."""
        if not self.source.startswith("keras.datasets."):
            return self.source
        return str(keras_datasets_folder() / KERAS_CACHE[self.name])


def unit_scaled(grey_levels):
    """Grey levels 0..255 as floats -> [-1, 1], the tutorial's (x - 127.5) / 127.5; a NumPy array or a
    TensorFlow tensor alike (the training step scales each batch with it)."""
    return (grey_levels - 127.5) / 127.5


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, height, width) -> float32 (N, height * width) in [-1, 1], as the tutorial scales them."""
    return unit_scaled(images.reshape(len(images), -1).astype(np.float32))


def is_image_batch(shape: tuple) -> bool:
    """Is `shape` that of a batch of images in one of IMAGE_LAYOUTS?"""
    return len(shape) >= 2 and tuple(shape[1:]) in IMAGE_LAYOUTS


def as_images(images: np.ndarray) -> np.ndarray:
    """A batch in any of IMAGE_LAYOUTS -> the same values shaped (N, *IMAGE_SHAPE); ValueError otherwise."""
    images = np.asarray(images)
    if not is_image_batch(images.shape):
        raise ValueError(f"images have shape {images.shape}; expected {IMAGE_LAYOUTS_TEXT}.")
    return images.reshape((len(images), *IMAGE_SHAPE))


def load_dataset(name: str = "mnist", path: str | None = None, download: bool | None = None) -> Dataset:
    """Load and check a dataset; raise InputError naming the file and the problem. With `path` None,
    `download` says whether Keras may download it: None, unless a download failed in the last day; True, now; False, never."""
    if name not in DATASETS:
        raise InputError(f"data.name: unknown dataset {name!r}; valid: {', '.join(DATASETS)}.")
    if path is None:
        arrays, source = _load_default(name, download)
    else:
        file = Path(path).expanduser()
        if not file.exists():
            raise InputError(
                f"data.path: {str(file)!r} does not exist. Give a .npz in Keras layout "
                f"({', '.join(NPZ_KEYS)}) or a folder with the four MNIST IDX files."
            )
        arrays = _load_idx_folder(file) if file.is_dir() else _load_npz(file)
        source = str(file.resolve())
    dataset = Dataset(**arrays, source=source, name=name)
    check_dataset(dataset)
    return dataset


def check_dataset(dataset: Dataset) -> None:
    """Raise InputError unless both splits hold uint8 IMAGE_SHAPE images with labels 0-9."""
    where = dataset.source
    for split in ("train", "test"):
        images = getattr(dataset, f"x_{split}")
        labels = getattr(dataset, f"y_{split}")
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
            raise InputError(
                f"{where}: x_{split} has shape {images.shape}; expected (N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) images."
            )
        if images.dtype != np.uint8:
            raise InputError(
                f"{where}: x_{split} has dtype {images.dtype}; expected uint8 grey levels 0-255 "
                "(as in the MNIST files; do not pre-scale the images)."
            )
        if len(images) == 0:
            raise InputError(f"{where}: x_{split} holds no images.")
        if labels.shape != (len(images),):
            raise InputError(
                f"{where}: y_{split} has shape {labels.shape}; expected ({len(images)},), "
                f"one label per image of x_{split}."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{where}: y_{split} has dtype {labels.dtype}; expected integers 0-9.")
        if labels.min() < 0 or labels.max() > 9:
            raise InputError(
                f"{where}: y_{split} holds labels from {labels.min()} to {labels.max()}; "
                "expected digit classes 0-9."
            )


def _load_default(name: str, download: bool | None = None) -> tuple[dict[str, np.ndarray], str]:
    """data.path null: keras.datasets (its cache, else a download unless one failed lately, see `skip_download`);
    else the shipped copy, where there is one."""
    skipped = None if (keras_datasets_folder() / KERAS_CACHE[name]).exists() else skip_download(name, download)
    if skipped is None:
        try:
            arrays = _load_from_keras(name)
            failed_marker(name).unlink(missing_ok=True)
            return arrays, f"keras.datasets.{name}"
        except InputError as error:
            remember_failed_download(name, error.__cause__)
            if name not in SHIPPED:
                raise
            why = f"the download failed ({error.__cause__}); it is tried again in a day, or now with data.download=true"
    else:
        if name not in SHIPPED:
            raise InputError(f"data.path is null, so {name} was to come from keras.datasets.{name}, but it is not in the "
                             f"Keras cache and {skipped}. Pass a local copy: data.path=/path/to/{name}.npz (Keras layout) "
                             "or data.path=/path/to/folder holding the four IDX files.")
        why = skipped
    file = SHIPPED[name]
    log.info("%s is not in the Keras cache and %s; using the copy shipped with ganlab: %s", name, why, file)
    return load_shipped(name), str(file)


def failed_marker(name: str) -> Path:
    return keras_datasets_folder() / FAILED_MARKER.format(name=name)


def skip_download(name: str, download: bool | None) -> str | None:
    """Why no download is tried (None: try it): `data.download=false`, or one failed less than a day ago."""
    if download is True:
        return None
    if download is False:
        return "data.download=false forbids a download"
    marker = failed_marker(name)
    try:
        age = time.time() - marker.stat().st_mtime
    except OSError:  # no marker: never failed here
        return None
    if age >= RETRY_DOWNLOAD_AFTER_S:
        return None
    hours = (RETRY_DOWNLOAD_AFTER_S - age) / 3600
    return (f"its download failed {age / 60:.0f} min ago (noted in {marker}), so it is not tried again for "
            f"{hours:.0f} h; data.download=true tries now")


def remember_failed_download(name: str, error) -> None:
    """Note the failure beside the Keras cache, so the next jobs on this machine do not wait on it again."""
    marker = failed_marker(name)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}: {error}\n")
    except OSError as failure:  # a read-only home: every job tries again, no worse than before
        log.debug("could not note the failed download in %s: %s", marker, failure)


def load_shipped(name: str = "mnist") -> dict[str, np.ndarray]:
    """The arrays of the copy shipped in ganlab/datasets/, after checking its SHA-256."""
    file = SHIPPED[name]
    if not file.is_file():
        raise InputError(
            f"data.path is null and {name} is neither in the Keras cache nor downloadable, and the copy that "
            f"ships with ganlab is missing ({file}); reinstall ganlab, or pass a local copy: "
            f"data.path=/path/to/{name}.npz (Keras layout) or a folder holding the four IDX files."
        )
    digest = file_sha256(file)
    if digest != SHIPPED_SHA256[name]:
        raise InputError(
            f"The {name} copy that ships with ganlab ({file}) is damaged: its SHA-256 is {digest}, expected "
            f"{SHIPPED_SHA256[name]}. Restore it (git checkout or reinstall ganlab), or pass another copy: "
            f"data.path=/path/to/{name}.npz (Keras layout) or a folder holding the four IDX files."
        )
    return _load_npz(file)


def file_sha256(file: str | Path) -> str:
    """The SHA-256 of a file (data, classifier weights), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_from_keras(name: str) -> dict[str, np.ndarray]:
    from ganlab.core import runtime

    runtime.import_tensorflow()  # here, not at the top: local files need no TensorFlow; and quietly
    import keras

    loader = getattr(keras.datasets, name)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # Keras's urlretrieve has none of its own
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # Keras wraps URLError/HTTPError in a plain Exception
        raise InputError(
            f"data.path is null, so {name} was to come from keras.datasets.{name}, but it is "
            f"not in the Keras cache and the download failed ({error}). Without a network, "
            f"pass a local copy: data.path=/path/to/{name}.npz (Keras layout) or "
            "data.path=/path/to/folder holding the four IDX files."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _load_npz(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise InputError(
                    f"data.path: {str(file)!r} lacks the arrays {', '.join(missing)}; a Keras-"
                    f"layout .npz holds {', '.join(NPZ_KEYS)} (it has: {', '.join(archive.files) or 'none'})."
                )
            return {key: archive[key] for key in NPZ_KEYS}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(
            f"data.path: {str(file)!r} cannot be read as a .npz archive ({error}). Give a .npz "
            "in Keras layout or a folder with the four MNIST IDX files."
        ) from error


def _load_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, names in IDX_FILES.items():
        candidates = [folder / f"{name}{suffix}" for name in names for suffix in ("", ".gz")]
        found = next((file for file in candidates if file.is_file()), None)
        if found is None:
            raise InputError(
                f"data.path: folder {str(folder)!r} has no {names[0]} (nor .gz); an IDX folder "
                f"holds {', '.join(names[0] for names in IDX_FILES.values())}."
            )
        arrays[key] = read_idx(found)
    return arrays


def read_idx(file: Path) -> np.ndarray:
    """Read one IDX file (raw or .gz) of unsigned bytes into an array of its stated shape."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise InputError(
            f"data.path: cannot read IDX file {str(file)!r} ({type(error).__name__}: {error}); it is truncated or "
            "damaged. Download it again, or give another copy."
        ) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(
            f"data.path: {str(file)!r} is not an IDX file of unsigned bytes "
            "(its header does not start with 0x00 0x00 0x08)."
        )
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_end + int(np.prod(shape))
    if len(raw) != expected:
        raise InputError(
            f"data.path: {str(file)!r} is truncated or padded: its header states shape {shape} "
            f"({expected} bytes in all) but the file holds {len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape)

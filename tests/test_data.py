"""Data loading: .npz and IDX folders (raw and gzipped), and every bad file named clearly."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import FIXTURE_MNIST, NO_MODELS, all_runs, run_cli
from ganlab.core import data
from ganlab.core.data import load_dataset, to_unit_range
from ganlab.core.errors import InputError


@pytest.fixture(scope="module")
def small():
    with np.load(FIXTURE_MNIST) as archive:
        return {key: archive[key] for key in archive.files}


def write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_idx_folder(folder, arrays, gz=False):
    folder.mkdir()
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for key, name in names.items():
        write_idx(folder / name, arrays[key], gz=gz)
    return folder


def test_npz_in_keras_layout_loads(small):
    dataset = load_dataset("mnist", str(FIXTURE_MNIST))
    assert dataset.x_train.shape == (2000, 28, 28) and dataset.x_train.dtype == np.uint8
    np.testing.assert_array_equal(dataset.y_test, small["y_test"])
    scaled = to_unit_range(dataset.x_train)
    assert scaled.shape == (2000, 784) and scaled.min() == -1.0 and scaled.max() == 1.0


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_raw_and_gzipped(tmp_path, small, gz):
    folder = write_idx_folder(tmp_path / "idx", small, gz=gz)
    dataset = load_dataset("mnist", str(folder))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(dataset, key), small[key])
    assert dataset.sha256() == load_dataset("mnist", str(FIXTURE_MNIST)).sha256()


def save_npz(path, arrays, **changes):
    np.savez(path, **{**arrays, **changes})
    return str(path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"data.path: '.*nowhere.npz' does not exist"):
        load_dataset("mnist", str(tmp_path / "nowhere.npz"))


def test_file_that_is_not_npz(tmp_path):
    file = tmp_path / "mnist.npz"
    file.write_text("these are not the digits you are looking for")
    with pytest.raises(InputError, match="cannot be read as a .npz"):
        load_dataset("mnist", str(file))


def test_truncated_npz(tmp_path):
    whole = FIXTURE_MNIST.read_bytes()
    file = tmp_path / "truncated.npz"
    file.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="truncated.npz.*cannot be read"):
        load_dataset("mnist", str(file))


def test_npz_with_wrong_keys(tmp_path, small):
    file = tmp_path / "renamed.npz"
    np.savez(file, images=small["x_train"], labels=small["y_train"])
    with pytest.raises(InputError, match="lacks the arrays x_train, y_train, x_test, y_test"):
        load_dataset("mnist", str(file))


def test_images_with_wrong_shape(tmp_path, small):
    path = save_npz(tmp_path / "flat.npz", small, x_train=small["x_train"].reshape(-1, 784))
    with pytest.raises(InputError, match=r"x_train has shape \(2000, 784\); expected \(N, 28, 28\)"):
        load_dataset("mnist", path)


def test_images_with_wrong_dtype(tmp_path, small):
    path = save_npz(tmp_path / "float.npz", small, x_test=small["x_test"].astype(np.float32) / 255)
    with pytest.raises(InputError, match="x_test has dtype float32; expected uint8"):
        load_dataset("mnist", path)


def test_labels_out_of_range(tmp_path, small):
    labels = small["y_train"].astype(np.int64)
    labels[5] = 10
    path = save_npz(tmp_path / "labels.npz", small, y_train=labels)
    with pytest.raises(InputError, match="y_train holds labels from 0 to 10; expected digit classes 0-9"):
        load_dataset("mnist", path)


def test_labels_count_differs_from_images(tmp_path, small):
    path = save_npz(tmp_path / "short.npz", small, y_test=small["y_test"][:-1])
    with pytest.raises(InputError, match=r"y_test has shape \(1999,\); expected \(2000,\)"):
        load_dataset("mnist", path)


def test_idx_folder_missing_a_file(tmp_path, small):
    folder = write_idx_folder(tmp_path / "idx", small)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(InputError, match="has no t10k-labels-idx1-ubyte"):
        load_dataset("mnist", str(folder))


def test_truncated_idx_file(tmp_path, small):
    folder = write_idx_folder(tmp_path / "idx", small)
    file = folder / "train-images-idx3-ubyte"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(InputError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", str(folder))


def test_unknown_dataset_name():
    with pytest.raises(InputError, match="data.name: unknown dataset 'cifar10'; valid: mnist, fashion_mnist"):
        load_dataset("cifar10", str(FIXTURE_MNIST))



# No network: an empty Keras cache and a proxy that refuses every connection.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}


def test_without_network_mnist_comes_from_the_shipped_copy(tmp_path):
    """data.path=null, an empty Keras cache, no network: the job trains on ganlab/datasets/mnist.npz and says so."""
    env = {"KERAS_HOME": str(tmp_path / "keras"), **OFFLINE}
    result = run_cli(["epochs=1", "steps_per_epoch=1", "eval.enabled=false", "objective=null", NO_MODELS],
                     cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    notes = [line for line in console.splitlines() if "using the copy shipped with ganlab" in line]
    assert len(notes) == 1 and str(data.SHIPPED["mnist"]) in notes[0] and "download failed" in notes[0]
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data.source"] == str(data.SHIPPED["mnist"])
    assert run.data.tags["data.sha256"] == load_dataset("mnist", str(data.SHIPPED["mnist"])).sha256()


def test_shipped_copy_is_the_full_mnist_with_its_recorded_hash():
    assert data.file_sha256(data.SHIPPED["mnist"]) == data.SHIPPED_MNIST_SHA256
    arrays = data.load_shipped("mnist")
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_test"].shape == (10000, 28, 28)
    assert np.bincount(arrays["y_train"]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    readme = (data.SHIPPED["mnist"].parent / "README.md").read_text()
    assert data.SHIPPED_MNIST_SHA256 in readme and "CC BY-SA 3.0" in readme and "Yann LeCun" in readme


def test_a_damaged_shipped_copy_is_refused_by_name(tmp_path, monkeypatch):
    damaged = tmp_path / "mnist.npz"
    whole = bytearray(data.SHIPPED["mnist"].read_bytes())
    whole[len(whole) // 2] ^= 0xFF  # one flipped byte inside the training images
    damaged.write_bytes(bytes(whole))
    monkeypatch.setitem(data.SHIPPED, "mnist", damaged)
    with pytest.raises(InputError, match=r"copy that ships with ganlab \(.*mnist.npz\) is damaged: its SHA-256 is "
                                         r"[0-9a-f]{64}, expected 06af5dfe.*data.path="):
        data.load_shipped("mnist")


def test_without_network_a_dataset_with_no_shipped_copy_says_how_to_pass_a_local_file(tmp_path):
    env = {"KERAS_HOME": str(tmp_path / "keras"), **OFFLINE}
    result = run_cli(["data=fashion_mnist", "epochs=1", "steps_per_epoch=1", "eval.enabled=false", "objective=null"],
                     cwd=tmp_path, env=env, timeout=300)
    assert result.returncode != 0
    assert "download failed" in result.stderr and "data.path=/path/to/fashion_mnist.npz" in result.stderr


def test_the_image_shape_has_one_home_and_three_layouts():
    assert data.IMAGE_SHAPE == (28, 28) and data.IMAGE_PIXELS == 784
    assert data.IMAGE_LAYOUTS_TEXT == "(N, 784), (N, 28, 28) or (N, 28, 28, 1)"
    images = np.arange(2 * 784, dtype=np.float32).reshape(2, 784)
    for layout in ((2, 784), (2, 28, 28), (2, 28, 28, 1)):
        assert data.is_image_batch(layout)
        np.testing.assert_array_equal(data.as_images(images.reshape(layout)), images.reshape(2, 28, 28))
    for shape in ((784,), (2, 392, 2), (2, 28, 28, 3), (2, 1, 28, 28)):
        assert not data.is_image_batch(shape)
    with pytest.raises(ValueError, match=r"images have shape \(2, 392, 2\); expected \(N, 784\)"):
        data.as_images(images.reshape(2, 392, 2))


DOWNLOAD_SEQUENCE = """
import os, sys, time
from ganlab.core import data
marker = data.failed_marker("mnist")
def load(download=None):
    started = time.perf_counter()
    dataset = data.load_dataset("mnist", None, download=download)
    print("loaded", dataset.source == str(data.SHIPPED["mnist"]), marker.is_file(), flush=True)
load()                          # tries, fails, notes it
load()                          # within the day: no try
load(download=False)            # never
load(download=True)             # tries now
os.utime(marker, (time.time() - data.RETRY_DOWNLOAD_AFTER_S - 60,) * 2)
load()                          # a day later: tries again
"""


def test_a_failed_download_is_remembered_for_a_day_per_machine(tmp_path):
    """Offline (a proxy that counts the connections it is asked for, then drops them): the first load tries the
    download and notes its failure beside the Keras cache; the next loads go straight to the shipped copy,
    until data.download=true or the note is a day old."""
    import socket
    import subprocess
    import sys
    import threading

    from conftest import REPO

    server = socket.create_server(("127.0.0.1", 0))
    tries = []

    def refuse():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            tries.append(1)
            connection.close()

    threading.Thread(target=refuse, daemon=True).start()
    proxy = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {**__import__("os").environ, "KERAS_HOME": str(tmp_path / "keras"), "TF_CPP_MIN_LOG_LEVEL": "3",
           **{key: proxy for key in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}, "NO_PROXY": "", "no_proxy": ""}
    counted = []
    process = subprocess.Popen([sys.executable, "-c", DOWNLOAD_SEQUENCE], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the proxy's count after each load (Keras prints its "Downloading" lines here too)
        if line.startswith("loaded"):
            assert line.startswith("loaded True True"), line  # the shipped copy, the note kept
            counted.append(len(tries))
    assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]
    server.close()
    first = counted[0]
    assert first >= 1  # the first load tried
    assert counted == [first, first, first, 2 * first, 3 * first]  # none within the day or when told not to

"""A fresh machine: the package carries MNIST, and a job's console says only what matters.

The console checks run real jobs with TensorFlow's C++ log level left to ganlab (as in a
fresh shell, where TF_CPP_MIN_LOG_LEVEL is unset), and assert that none of TensorFlow's
start-up, tf.data/grappler or retracing lines reach it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, SHARED_SWEEP_ENV
from ganlab.core import data
from ganlab.core import runtime

NOISE = ("E0000", "W0000", "I0000", "absl::InitializeLog", "cuda drivers", "cuInit", "tf.function retracing",
         "use_unbounded_threadpool", "remapper failed")


def noise_in(console: str) -> list[str]:
    return [line for line in console.splitlines() if any(mark in line for mark in NOISE)]


def test_a_job_prints_no_tensorflow_noise(dcgan_job):
    """A dcgan job (conftest's, run with FRESH_SHELL): besides the start-up lines, its graph draws grappler's
    "remapper failed" and tf.data's "use_unbounded_threadpool" records at run time."""
    _, result = dcgan_job
    assert "objective ema_fid" in result.stdout  # the job ran to its closing lines
    assert noise_in(result.stdout + result.stderr) == []


def test_a_sweep_of_four_jobs_in_one_process_prints_no_retracing_warning(dropout_sweep):
    """At level 2 too, the level a machine with an NVIDIA GPU gets (errors shown; conftest's shared sweep
    runs at it): no tf.data error from logging the generators, no CUDA probe error on this machine without one."""
    result = dropout_sweep.result
    assert SHARED_SWEEP_ENV["TF_CPP_MIN_LOG_LEVEL"] == "2"  # the level this test is about
    assert "sweep of 4 jobs (0 failed)" in result.stdout
    assert noise_in(result.stdout + result.stderr) == []


START_UP = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796041695.729839   27091 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796041707.112007   27289 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
I0000 00:00:1796041695.730250   27091 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1796041713.851807   27289 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
E0000 00:00:1796041713.851900   27289 some_op.cc:12] a real error
/site-packages/google/protobuf/runtime_version.py:98: UserWarning: Protobuf gencode version 5.28.3 is older
"""


def test_start_up_lines_are_held_to_the_log_level_and_errors_pass():
    """What TensorFlow logs before absl is initialised ignores TF_CPP_MIN_LOG_LEVEL; ganlab applies it."""
    shown = runtime.shown_at_start(START_UP, min_level=2, gpu=False).splitlines()
    assert shown == ["E0000 00:00:1796041713.851900   27289 some_op.cc:12] a real error",
                     START_UP.splitlines()[-1]]  # a Python warning is not TensorFlow's log: it stays
    with_gpu = runtime.shown_at_start(START_UP, min_level=2, gpu=True)
    assert "failed call to cuInit" in with_gpu  # with an NVIDIA GPU, a failed CUDA start matters
    assert runtime.shown_at_start(START_UP, min_level=3, gpu=False).splitlines() == [START_UP.splitlines()[-1]]
    everything = runtime.shown_at_start(START_UP, min_level=0, gpu=True)
    assert "To enable the following instructions" in everything and "absl::InitializeLog" not in everything


def test_an_import_refused_for_a_while_imports_afterwards():
    """How TensorFlow is imported without scikit-learn (a job's whole run: test_train_cli.py's short run)."""
    name = "tabnanny"  # a standard module nothing here imports
    sys.modules.pop(name, None)
    with runtime.import_refused(name):
        with pytest.raises(ImportError):
            __import__(name)
    assert __import__(name).__name__ == name
    with runtime.import_refused(name):  # one imported already stays
        assert __import__(name) is sys.modules[name]


def test_the_wheel_carries_mnist_and_its_readme(tmp_path):
    """A non-editable install has the shipped copy: it is package data of the wheel."""
    for builder in ("setuptools", "wheel"):  # the build backend, without network access (no build isolation)
        pytest.importorskip(builder, reason=f"building the wheel offline needs {builder} in this environment")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "ganlab", source / "ganlab", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("ganlab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"ganlab/datasets/mnist.npz", "ganlab/datasets/README.md"} <= names
        packed = tmp_path / "mnist.npz"
        packed.write_bytes(archive.read("ganlab/datasets/mnist.npz"))
    assert data.file_sha256(packed) == data.SHIPPED_MNIST_SHA256

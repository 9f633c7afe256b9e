"""The process around a job: a quiet console, TensorFlow's seeds, threads and determinism.

`quiet_console()` runs in every entry point before TensorFlow is imported: on a machine
without an NVIDIA GPU it silences TensorFlow's and absl's start-up chatter (the CUDA
probe lines, which read like errors on a CPU). `configure_tensorflow` seeds Python,
NumPy, TensorFlow and Keras and sets the thread count and op determinism, both ways, so
a later job of the same process gets exactly what its config says.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def quiet_console() -> None:
    """Before TensorFlow loads: keep its C++ and absl logging to real errors, or none on CPU-only machines."""
    if has_nvidia_gpu():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # warnings and info off, GPU errors still shown
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the CUDA probe's "errors" are noise here
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # nothing to probe for
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables" chatter


def import_tensorflow():
    """`import tensorflow`, with its CUDA probe silenced on machines without an NVIDIA GPU.

    TensorFlow's CUDA stub logs through absl before its own log level applies, so on a
    CPU-only machine the import (and the first device listing) runs with standard error
    pointed at /dev/null; an error still raises as a Python exception.
    """
    quiet_console()
    if "tensorflow" in sys.modules or has_nvidia_gpu():
        import tensorflow as tf

        return tf
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the second probe, at device set-up
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


def configure_tensorflow(seed: int, threads: int | None, deterministic: bool) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; set the thread count and op determinism."""
    tf = import_tensorflow()
    import keras

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # a later job in the same process: TensorFlow is already running
            current = tf.config.threading.get_intra_op_parallelism_threads()
            if current != threads:
                log.warning("threads=%d not applied: TensorFlow already runs with %d", threads, current)
    keras.backend.clear_session()  # a fresh graph and layer names for every job of a process
    random.seed(seed)
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow global seeds
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # An earlier job of the process may have turned it on; TensorFlow's public API can
        # only turn it on, so turning it off goes through the module that API wraps.
        from tensorflow.python.framework import config as framework_config

        framework_config.disable_op_determinism()


def op_determinism_enabled() -> bool:
    from tensorflow.python.framework import config as framework_config

    return framework_config.is_op_determinism_enabled()


def threads_for_job(threads: int | None, cpus_per_task: int | None, parallel_jobs: int | None) -> int:
    """`threads`, or when null: the job's cores under submitit, cores / n_jobs under the
    parallel launcher, else all cores."""
    if threads is not None:
        return threads
    if cpus_per_task:
        return int(cpus_per_task)
    cores = os.cpu_count() or 1
    if parallel_jobs:
        return max(1, cores // parallel_jobs) if parallel_jobs > 0 else 1  # joblib's -1: as many jobs as cores
    return cores

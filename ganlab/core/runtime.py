"""The process around a job: a quiet console, TensorFlow's seeds, threads and determinism.

`quiet_console()` runs in every entry point before TensorFlow is imported: it sets
TensorFlow's C++ log level (errors only with an NVIDIA GPU; on a CPU-only machine none,
since the CUDA probe's and the tf.data/grappler "E0000" lines read like errors there) and
drops TensorFlow's retracing warning, which a sweep's later jobs trigger by building new
models in one process. `import_tensorflow()` imports TensorFlow with standard error held
back: the lines logged before absl is initialised ignore the log level, so they are
filtered by it here and only what it lets through is shown; scikit-learn is refused meanwhile
(`import_refused`), so Keras leaves out the wrappers it alone needs it for. `Deferred` stands for TensorFlow or
Keras in a module that uses them only inside its functions, so importing that module (a registry's
names, a config's check) loads neither. `configure_tensorflow` seeds Python,
NumPy, TensorFlow and Keras and sets the thread count and op determinism, both ways, so
a later job of the same process gets exactly what its config says.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import re
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


# TensorFlow's C++ log lines (absl's format): severity letter, date, time, thread, file:line]
CPP_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
CPP_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}  # as TF_CPP_MIN_LOG_LEVEL counts them
ABSL_PREAMBLE = "All log messages before absl::InitializeLog() is called are written to STDERR"
# Lines of Python's own (a warning, a traceback): never the continuation of a C++ record.
PYTHON_LINE = re.compile(r"^(\S+:\d+: \w+(Warning|Error): |Traceback |\w+(Error|Exception): )")
# The CUDA probe's records, from the stub and the platform: on a machine without an NVIDIA GPU, noise at any level.
CUDA_PROBE = re.compile(r"\] (Could not find cuda drivers|failed call to cuInit)")
RETRACING = "triggered tf.function retracing"  # TensorFlow's warning when many tf.functions are traced


class _NoRetracingWarning(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls ... triggered tf.function retracing": every job
    (and MLflow's model logging) builds new models whose predict functions are traced once each, as
    they must be; the warning's advice does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return RETRACING not in record.getMessage()


def quiet_console() -> None:
    """Before TensorFlow loads: keep its C++ and absl logging to real errors, or none on CPU-only
    machines (a level the user set is kept), and drop its retracing warning."""
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):  # unset or empty
        # 2: warnings and info off, GPU errors still shown; 3: the CUDA probe's "errors" are noise on a CPU
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if has_nvidia_gpu() else "3"
    if not has_nvidia_gpu():
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # nothing to probe for
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables" chatter
    tf_logger = logging.getLogger("tensorflow")  # the logger TensorFlow's Python side writes to
    if not any(isinstance(existing, _NoRetracingWarning) for existing in tf_logger.filters):
        tf_logger.addFilter(_NoRetracingWarning())


def min_cpp_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 0)
    except ValueError:
        return 0


def shown_at_start(text: str, min_level: int, gpu: bool) -> str:
    """Of what TensorFlow wrote to standard error while loading, what its log level lets through:
    C++ log records below `min_level` (with their continuation lines), absl's preamble and, without
    a `gpu`, the CUDA probe's records go; anything else (a Python warning, a fatal record) stays."""
    kept, keeping = [], True
    for line in text.splitlines(keepends=True):
        record = CPP_LOG_LINE.match(line)
        if record:
            keeping = CPP_SEVERITY[record.group(1)] >= min_level and (gpu or not CUDA_PROBE.search(line))
        elif ABSL_PREAMBLE in line:
            keeping = False
            continue
        elif PYTHON_LINE.match(line):
            keeping = True
        if keeping:
            kept.append(line)
    return "".join(kept)


def import_tensorflow():
    """`import tensorflow`, its start-up lines held to its own log level.

    TensorFlow's CUDA stub and oneDNN notice log through absl before absl is initialised, when
    TF_CPP_MIN_LOG_LEVEL does not apply yet (`Could not find cuda drivers`, `All log messages
    before absl::InitializeLog()`). So the import and the first device listing run with
    standard error going to a file, and what the level lets through (`shown_at_start`) is
    written back; an import error still raises as a Python exception.
    """
    quiet_console()
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    # Keras imports scikit-learn (and with it scipy.stats) only for its scikit-learn wrappers, which
    # ganlab never uses, and leaves them out when it is missing: ~1.4 of the ~7 CPU-s this import takes.
    with tempfile.TemporaryFile(mode="w+b") as held, import_refused("sklearn"):
        try:
            os.dup2(held.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the second probe, at device set-up
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            shown = shown_at_start(held.read().decode(errors="replace"), min_cpp_log_level(), has_nvidia_gpu())
            if shown:
                sys.stderr.write(shown)
                sys.stderr.flush()
    return tf


@contextlib.contextmanager
def import_refused(module: str):
    """Within it, `import <module>` raises ImportError, unless the module is imported already;
    afterwards it imports as usual."""
    refused = module not in sys.modules
    if refused:
        sys.modules[module] = None  # Python's own marker for "no such module here"
    try:
        yield
    finally:
        if refused and module in sys.modules and sys.modules[module] is None:
            del sys.modules[module]


class Deferred:
    """A module imported the first time one of its attributes is read, e.g. `tf = Deferred("tensorflow")`
    at the top of a module that uses TensorFlow only inside its functions. The import goes through
    `import_tensorflow` (the quiet way), and it happens in a job only once the job uses it: after its config
    is checked, its resume looked up, its run opened and its data read, and after `configure_tensorflow`
    has set the threads. A refused config, resume or data file so never waits for TensorFlow to load."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        module = sys.modules.get(self._name)
        if module is None:
            import_tensorflow()
            module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<{self._name}, imported at its first use>"


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


@contextlib.contextmanager
def op_determinism_suspended():
    """Op determinism off for the block, as it was afterwards. For Keras's `predict` on an input
    example (where no number depends on it): under op determinism TensorFlow 2.21 rewrites
    predict's parallel tf.data map into a sequential one and logs the attribute it drops as an
    `E0000 ... NodeDef mentions attribute use_unbounded_threadpool` error."""
    from tensorflow.python.framework import config as framework_config

    enabled = framework_config.is_op_determinism_enabled()
    if enabled:
        framework_config.disable_op_determinism()
    try:
        yield
    finally:
        if enabled:
            framework_config.enable_op_determinism()


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

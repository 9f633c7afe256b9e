"""Checkpoints: the one file a job needs to continue bit for bit from its last whole epoch.

A checkpoint is ONE file, `checkpoint/checkpoint.npz` in the job's output folder, holding
- every variable of G and D (weights and the dropout layers' seed states), both Adam
  optimizers' variables, the EMA weights if any, and the trainer's random generator;
- the per-epoch records so far (per-step losses and logged metrics);
- `meta`: the epoch it was taken after, the MLflow run id, store and experiment, the
  thread count the job ran with, and the job's resolved config.
A first checkpoint without state is written as soon as the run exists, so a job killed
even before its first epoch can be resumed (it starts again from its seed).

It is written to a temporary file in the same folder, flushed to disk and renamed over
the old one, so a kill at any instant leaves either the old checkpoint or the new one,
never parts of two epochs. While a job runs it holds a lock on its checkpoint folder
(and a resumed job on the folder it resumes from), so a second resume of the same run
is refused instead of logging epochs twice. A lock dies with its process, `kill -9`
included. That `flock` holds within one machine (`GANLAB_LOCK_DIR` moves it off a disk
without locks: `ganlab.core.filelock`); across machines the run's owner tag in the store
(`ganlab.tracking.run_lock`) keeps two processes from training one run.

Resume (what a job continues, and putting the state back) is `ganlab.training.resume`'s.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ganlab.core import filelock
from ganlab.tracking import run_lock
from ganlab.tracking import store as tracking
from ganlab.core.job_config import JobConfig
from ganlab.core.errors import InputError

log = logging.getLogger(__name__)

FOLDER = "checkpoint"
FILE = "checkpoint.npz"
PARTIAL_PATTERN = ".checkpoint-*.partial"  # a write that a kill -9 cut short
LOCK_FILE = "job.lock"


AlreadyFinished = run_lock.AlreadyFinished  # resume= named a run that has trained all its epochs: nothing to do


@dataclass
class Checkpoint:
    folder: Path
    epoch: int
    run_id: str | None
    tracking_uri: str | None
    experiment: str | None
    threads: int | None
    config: DictConfig

    @property
    def file(self) -> Path:
        return self.folder / FILE


def save(folder: Path, variables: list[np.ndarray], records: list[dict], meta: dict) -> None:
    """Write the checkpoint of `folder` atomically: one temporary file, fsync, one rename."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"v{index:04d}": value for index, value in enumerate(variables)}
    arrays["records"] = np.array(json.dumps(records))
    arrays["meta"] = np.array(json.dumps(meta))
    remove_partials(folder)
    descriptor, partial = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, folder / FILE)
    except BaseException as error:
        Path(partial).unlink(missing_ok=True)  # a full disk or a signal leaves no partial file behind
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise InputError(f"checkpoint: no space left on the device of {str(folder)!r} to write the "
                             "checkpoint (about 36 MB for the tutorial's nets); free some space, or set "
                             "hydra.run.dir to a folder on a larger disk.") from error
        raise


def remove_partials(folder: Path) -> None:
    """Drop what a write killed by kill -9 left (called by the folder's only writer: its lock holder)."""
    for partial in Path(folder).glob(PARTIAL_PATTERN):
        partial.unlink(missing_ok=True)
        log.info("removed %s, left by a checkpoint write that was killed", partial)


def find(folder: Path) -> Checkpoint:
    """Read the checkpoint in `folder` (a checkpoint folder or the job folder holding one)."""
    folder = Path(folder)
    if (folder / FOLDER).is_dir():
        folder = folder / FOLDER
    file = folder / FILE
    if not file.is_file():
        raise InputError(
            f"resume: no checkpoint in {str(folder)!r} (expected {FILE}, written after every epoch). "
            "Give a job's output folder, its checkpoint folder, or an MLflow run id."
        )
    if file.is_symlink() and file.resolve().parent != folder.resolve():
        raise InputError(f"resume: the checkpoint {str(file)!r} is a link to {str(file.resolve())!r}, outside its "
                         "folder; a job's checkpoint is its own file. Resume from the folder that holds it.")
    try:
        with np.load(file, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
        return Checkpoint(folder=folder, epoch=int(meta["epoch"]), run_id=meta.get("run_id"),
                          tracking_uri=meta.get("tracking_uri"), experiment=meta.get("experiment"),
                          threads=meta.get("threads"), config=OmegaConf.create(meta["config"]))
    except Exception as error:  # a truncated zip, a broken JSON, a missing key: all the same to the user
        raise _unreadable(file, error) from error


def load_state(checkpoint: Checkpoint) -> tuple[list[np.ndarray], list[dict]]:
    """The saved variables (in save order) and the per-epoch records."""
    try:
        with np.load(checkpoint.file, allow_pickle=False) as archive:
            names = sorted(name for name in archive.files if name.startswith("v"))
            return [archive[name] for name in names], json.loads(str(archive["records"]))
    except Exception as error:
        raise _unreadable(checkpoint.file, error) from error


def _unreadable(file: Path, error: Exception) -> InputError:
    return InputError(
        f"resume: the checkpoint {str(file)!r} cannot be read ({type(error).__name__}: {error}); it is damaged. "
        "Resume from an older copy, or start the job again."
    )


class FolderLock:
    """An exclusive, non-blocking lock on a checkpoint folder for the life of a job."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._stream = None

    def acquire(self) -> "FolderLock":
        self._stream = filelock.open_lock_file(self.folder, LOCK_FILE)
        try:
            taken = filelock.flock(self._stream, exclusive_now=True)
        except BaseException:
            self._stream.close()
            raise
        if not taken:
            self._stream.close()
            raise InputError(
                f"resume: the checkpoint in {str(self.folder)!r} is in use by a running job (its training or "
                "another resume of it); wait for that job to end, or stop it first."
            ) from None
        return self

    def release(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def job_lock(output_dir: Path, resume):
    """The lock on this job's checkpoint folder while it trains, unless its resume already holds it
    (a requeued SLURM job continues in its own folder)."""
    folder = Path(output_dir) / FOLDER
    if resume is not None and resume.checkpoint.folder.resolve() == folder.resolve():
        return contextlib.nullcontext()
    return FolderLock(folder)


def write(output_dir: Path, trainer, history: list, run, threads: int | None, cfg: JobConfig) -> None:
    """The job's checkpoint after `trainer.epochs_done` epochs (`trainer` None: the first, stateless one)."""
    state = trainer.get_state() if trainer is not None else []
    epoch = trainer.epochs_done if trainer is not None else 0
    meta = {"epoch": epoch, "run_id": run.run_id, "tracking_uri": tracking.resolve_uri(run.uri),
            "experiment": run.experiment, "threads": threads, "config": cfg.as_dict()}
    save(Path(output_dir) / FOLDER, state, [record.to_dict() for record in history], meta)


def remove(folder: Path) -> None:
    """Drop a finished job's checkpoint (checkpoint.keep=none)."""
    shutil.rmtree(folder / FOLDER, ignore_errors=True)

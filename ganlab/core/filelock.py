"""File locks (`flock`) that say in one line what to do on a disk that refuses them.

A checkpoint folder and a SQLite store are guarded by an `flock` on a lock file beside
them. Some shared disks (NFS without a lock daemon, some FUSE mounts) refuse `flock` with
ENOLCK, ENOSYS or EOPNOTSUPP: then `GANLAB_LOCK_DIR=<a folder on a local disk>` puts the
lock files there instead, one per guarded path (named by a hash of its absolute path). An
`flock` holds only among the processes of one machine; what keeps two machines from
training one run is the run's owner tag in the store (`ganlab.tracking.run_lock`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path

from ganlab.core.errors import InputError

LOCK_DIR_ENV = "GANLAB_LOCK_DIR"
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}


def lock_path(guarded: Path, name: str) -> Path:
    """The lock file for `guarded` (a folder): `guarded/name`, or a file in GANLAB_LOCK_DIR when that is set."""
    lock_dir = os.environ.get(LOCK_DIR_ENV)
    if not lock_dir:
        return Path(guarded) / name
    digest = hashlib.sha256(str(Path(guarded).resolve()).encode()).hexdigest()[:24]
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    return Path(lock_dir) / f"{digest}-{name}"


def open_lock_file(guarded: Path, name: str):
    """The lock file for the folder `guarded` (`lock_path`), opened for `flock`; the folder is made if missing."""
    Path(guarded).mkdir(parents=True, exist_ok=True)
    return open(lock_path(guarded, name), "a")


def flock(stream, exclusive_now: bool = False) -> bool:
    """Take an exclusive `flock` on the open file `stream`: waiting for it, or (`exclusive_now`) not
    waiting, returning False when another process holds it. A disk without locks is one InputError."""
    flags = fcntl.LOCK_EX | (fcntl.LOCK_NB if exclusive_now else 0)
    try:
        fcntl.flock(stream, flags)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in NO_LOCKS:
            raise
        raise InputError(f"the disk holding {stream.name!r} does not support file locks ({os.strerror(error.errno)}); "
                         f"set {LOCK_DIR_ENV} to a folder on a local disk (e.g. {LOCK_DIR_ENV}=/tmp/ganlab-locks) "
                         "and run the command again.") from None
    return True

"""A job's stop signals, held over a write to its database store.

A job turns SIGINT and SIGTERM into KeyboardInterrupt (`ganlab.training.job.signals_as_interrupt`).
Raised in the middle of a write to a database-backed MLflow store (SQLite, PostgreSQL, MySQL), it
leaves that write's transaction open in the process: SQLite's lock on the file stays taken, so even
the run's closing cannot mark it KILLED, and the run stays RUNNING. A write is short (a busy store
makes it wait at most its busy timeout), so a stop that arrives during one takes effect as the write
returns: the store calls run inside `held()`, and the job's signal handler calls `stop(name)`.
"""

from __future__ import annotations

import contextlib
import threading

_writes = 0  # store writes in progress in the main thread, where signal handlers run
_waiting: str | None = None  # the name of the stop signal that arrived during one


@contextlib.contextmanager
def held():
    """A stop (`stop(name)`) that arrives inside the block raises KeyboardInterrupt at the block's end.
    In another thread the block is left as it is: signals are handled in the main thread only."""
    global _writes, _waiting
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _writes += 1
    try:
        yield
    finally:
        _writes -= 1
        if _writes == 0 and _waiting is not None:
            name, _waiting = _waiting, None
            raise KeyboardInterrupt(f"signal {name}")


def stop(name: str) -> None:
    """What a stop signal named `name` does: KeyboardInterrupt now, or at the end of the write in progress."""
    global _waiting
    if _writes:
        _waiting = name
        return
    raise KeyboardInterrupt(f"signal {name}")

"""A job's or a sweep's stop signals, held over a write to its database store.

A job turns SIGINT and SIGTERM into KeyboardInterrupt (`ganlab.training.job.signals_as_interrupt`), and so
does a sweep's parent process between and around its jobs (`ganlab.sweeps.sweep`).
Raised in the middle of a write to a database-backed MLflow store (SQLite, PostgreSQL, MySQL), it
leaves that write's transaction open in the process: SQLite's lock on the file stays taken, so even
the run's closing cannot mark it KILLED, and the run stays RUNNING. A write is short (a busy store
makes it wait at most its busy timeout), so a stop that arrives during one takes effect as the write
returns: the store calls run inside `held()` (`ganlab.tracking.store.store_call`, and every call of
open_store's client, a `HeldCalls`), and the signal handlers call `stop(name)`. A scheduler's
preemption handler (submitit's, which requeues the job and exits) is held the same way: `stop(name, act)`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

_writes = 0  # store writes in progress in the main thread, where signal handlers run
_waiting: Callable[[], None] | None = None  # what the stop signal that arrived during one does


@contextlib.contextmanager
def held():
    """A stop (`stop(name)`) that arrives inside the block takes effect at the block's end.
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
            act, _waiting = _waiting, None
            act()


def stop(name: str, act: Callable[[], None] | None = None) -> None:
    """What a stop signal named `name` does, now or at the end of the write in progress: `act()`, and
    by default KeyboardInterrupt."""
    global _waiting

    def interrupt() -> None:
        raise KeyboardInterrupt(f"signal {name}")

    if _writes:
        _waiting = act or interrupt
        return
    (act or interrupt)()


class HeldCalls:
    """`target` (an MlflowClient on a database store) with every method call inside `held()`: a stop
    that lands inside one takes effect as it returns."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name: str):
        target = self.__dict__.get("_target")  # absent while pickle rebuilds the object: nothing to forward yet
        if target is None:
            raise AttributeError(name)
        found = getattr(target, name)
        if not callable(found):
            return found

        def held_call(*args, **kwargs):
            with held():
                return found(*args, **kwargs)

        return held_call

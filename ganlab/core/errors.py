"""The exceptions the wings share: bad input, a diverged job, a stop whose run was not marked.

Everything that is the user's to fix raises `InputError` with a message that names the
key or file and says what would be valid. The entry points print just that message
(no traceback) and exit non-zero; a job's MLflow run records it as `failure_reason`.
"""


import sys


class InputError(ValueError):
    """Bad input that the user can fix; the message says what and how."""


def report_or_refuse(produce) -> int:
    """A CLI's ending: print what `produce()` returns and exit 0, or the InputError's one
    paragraph on standard error and exit 2."""
    try:
        print(produce())
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the nets can no longer be trained."""


class RunNotMarked(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a job, and its run could not be marked KILLED: the store failed
    while the run was being closed. Still a stop (exit 130 or 143); `str()` is the stop's own, which
    names the signal, and `why` is the one line to print instead of "its run is marked KILLED"."""

    def __init__(self, stopped: BaseException, why: str):
        super().__init__(*stopped.args)
        self.why = why

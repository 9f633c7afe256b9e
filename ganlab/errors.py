"""The one exception type for bad input: a config value, a data file, a weights file.

Everything that is the user's to fix raises `InputError` with a message that names the
key or file and says what would be valid. It is a Hydra "compact" exception, so the
app prints just that message (no traceback) and exits non-zero.
"""

from hydra.errors import CompactHydraException


class InputError(CompactHydraException, ValueError):
    """Bad input that the user can fix; the message says what and how."""

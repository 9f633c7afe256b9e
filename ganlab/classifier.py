"""Command line: train the scoring classifier (`python -m ganlab.classifier --help`).

The classifier itself is `ganlab.evaluation.classifier`.
"""

import sys

from ganlab.evaluation.classifier import main, parse_args  # noqa: F401  (parse_args: the docs test checks documented commands)

if __name__ == "__main__":
    sys.exit(main())

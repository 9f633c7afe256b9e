"""One training job top to bottom: the epoch loop, the end-of-epoch steps, the checkpoint
and resume, and the files a job leaves.

Imports `core`, `gan`, `evaluation` and `tracking`.
"""

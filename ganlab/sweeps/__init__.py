"""Many jobs as one question: the sweep's parent run, SLURM's view of its jobs, seed
statistics, comparisons between settings, and the sweep's summary.

Imports every wing below it (`core`, `gan`, `evaluation`, `tracking`, `training`).
"""

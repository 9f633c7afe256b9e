"""Many jobs as one question: every job checked before the sweep starts (`precheck`), the sweep's
parent run, SLURM's view of its jobs, seed statistics, comparisons between settings, and the
sweep's summary (`summary`: its files; `ranking`: the jobs' order and the best job; `pictures`:
montages, curves and heatmap; `parent`: what the parent run shows).

Imports every wing below it (`core`, `gan`, `evaluation`, `tracking`, `training`).
"""

"""Many jobs as one question: the sweep's parent run, SLURM's view of its jobs, seed
statistics, comparisons between settings, and the sweep's summary (`summary`: its files;
`ranking`: the jobs' order and the best job; `pictures`: montages and heatmap; `parent`: what
the parent run shows).

Imports every wing below it (`core`, `gan`, `evaluation`, `tracking`, `training`).
"""

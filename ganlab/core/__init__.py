"""The ground floor: what every other wing may read.

Owns the errors users see, the choice registries, the score registry (every score's name
and direction), the config's one pass (`config`) into the typed `JobConfig` (`job_config`) and
its defaults, when two params are the same setting (`params`), Markdown tables, TensorFlow's runtime settings, the
machine's facts and what ran on it, loading image data, the runs.csv record, the pictures, file locks, and a
job's stop signals held over a store write (`interrupts`). Imports nothing from ganlab outside `core`.
"""

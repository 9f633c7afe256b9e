"""The ground floor: what every other wing may read.

Owns the errors users see, the choice registries, the score registry (every score's name
and direction), the config's one pass (`config`) into the typed `JobConfig` (`job_config`) and
its defaults, when two params are the same setting (`params`), Markdown tables, TensorFlow's runtime settings, the
machine's facts, loading image data, the runs.csv record, the pictures and file locks. Imports nothing
from ganlab outside `core`.
"""

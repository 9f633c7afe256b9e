"""The ground floor: what every other wing may read.

Owns the errors users see, the choice registries, the score registry (every score's name
and direction), the config's checks and defaults, TensorFlow's runtime settings, the
machine's facts, loading image data, the runs.csv record and the pictures. Imports nothing
from ganlab outside `core`.
"""

"""A record of values (runs.csv): the one reader and writer of the CSV a comparison or a verdict is computed from.

Every record has one row per value: the grouping keys' columns (a sweep's swept knobs,
such as `dropout,label_smoothing` in docs/study/runs.csv, or `dtype` in the baseline's
docs/baseline/runs.csv), then RECORD_COLUMNS: seed, epoch, metric, value. Values are
written at full precision (repr), so what is read back is what was written, to the bit.

A column named by an old name (RENAMED) is read under its new one: records written
before the dtype knob's rename call its column `precision`.

Standard library only: the seed comparison reads records without TensorFlow, MLflow or Hydra.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RECORD_COLUMNS = ("seed", "epoch", "metric", "value")
DTYPE = "dtype"  # the knob that picks a job's number format, and the baseline record's grouping column
# Old column (and run param) names, read as their new ones.
RENAMED = {"precision": DTYPE}
DTYPE_NAMES = (DTYPE, *(old for old, new in RENAMED.items() if new == DTYPE))  # the dtype's names, newest first


@dataclass(frozen=True)
class Observation:
    """One value of one seed: `group` maps the grouping keys to their values, as strings."""

    group: dict[str, str]
    seed: str
    metric: str
    epoch: int
    value: float


def write_observations(observations: Sequence[Observation], keys: Sequence[str], path: str | Path) -> Path:
    """One row per observation, in the order given: the columns `keys`..., seed, epoch, metric,
    value. `read_observations` gives the same observations back, to the last bit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow([*keys, *RECORD_COLUMNS])
        for observation in observations:
            writer.writerow([*(observation.group.get(key, "") for key in keys), observation.seed,
                             int(observation.epoch), observation.metric, repr(float(observation.value))])
    return path


def read_observations(path: str | Path) -> tuple[list[Observation], list[str]]:
    """The observations of a record and its grouping keys (the columns before `seed`, old
    names read as their new ones). FileNotFoundError if there is no file; ValueError naming
    the file, and the line, when it is not a record."""
    path = Path(path)
    with open(path, newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader, [])
        width = len(RECORD_COLUMNS)
        if tuple(header[-width:]) != RECORD_COLUMNS:
            raise ValueError(f"{path}: the header is {','.join(header) or 'empty'}; a record's columns are the "
                             f"grouping keys, then {','.join(RECORD_COLUMNS)}.")
        keys = [RENAMED.get(key, key) for key in header[:-width]]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{path}: the grouping columns {','.join(header[:-width])} name a key twice "
                             f"(old names are read as new ones: {', '.join(f'{a} as {b}' for a, b in RENAMED.items())}).")
        observations = []
        for line_number, cells in enumerate(reader, start=2):
            try:
                *group, seed, epoch, metric, value = cells
                observations.append(Observation(dict(zip(keys, group, strict=True)), seed, metric, int(epoch), float(value)))
            except ValueError:
                raise ValueError(f"{path}, line {line_number}: expected {len(header)} cells "
                                 f"({','.join(header)}) with an integer epoch and a number value; got {cells}.") from None
    return observations, keys

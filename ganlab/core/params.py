"""A run's params as MLflow keeps them: when two values are the same setting.

MLflow stores every param as a string, a null as "None"; a value typed "0.30" on one command line
and "0.3" on another is the same setting. `same_value` is the one rule: the sweep comparison's
groups (`ganlab.sweeps.comparison`) and a settle sweep's reuse of earlier runs
(`ganlab.sweeps.settle_store`) both use it. Plain Python: no MLflow, Hydra or OmegaConf.
"""

from __future__ import annotations


def same_value(a, b) -> bool:
    """Whether two param values are the same setting: as MLflow stores them (None is the string "None"),
    equal as strings or as numbers ("0.30" and "0.3")."""
    a, b = ("None" if value is None else str(value) for value in (a, b))
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False

""""Did you mean": a misspelt knob on the command line, named with its nearest real one before Hydra runs.

Hydra answers `dropuot=0.1` with "Could not override 'dropuot'... use +dropuot=0.1", advice that
adds a knob nothing reads. `misspelt(overrides)` composes the config (with the overrides' own
group choices, so `model=dcgan model.channels=...` is judged against the dcgan config), and
for each `key=value` whose key the config lacks but that is close to one it has (difflib's
ratio, Ratcliff and Obershelp 1988) returns one line saying so. A key with nothing close is
left to Hydra; `+key`, `~key`, `hydra...` and group choices are never judged here.
"""

from __future__ import annotations

import difflib
from ganlab.core.defaults import CONF_DIR as CONF

OTHER_CONFIG = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")
CUTOFF = 0.75  # difflib similarity above which a key is taken for a misspelling (dropuot ~ dropout: 0.86)


def groups() -> set[str]:
    return {folder.name for folder in CONF.iterdir() if folder.is_dir()}


def _flat_keys(config, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        name = f"{prefix}{key}"
        keys.add(name)
        if hasattr(value, "items"):
            keys |= _flat_keys(value, f"{name}.")
    return keys


def misspelt(overrides: list[str]) -> list[str]:
    """One line per override whose key is a near miss of a real knob (empty: nothing to say)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if any(item.split("=")[0] in OTHER_CONFIG for item in overrides):
        return []  # another config (a named sweep): its keys are Hydra's to judge
    pairs = [item.split("=", 1) for item in overrides if "=" in item and not item.startswith(("+", "~", "-"))]
    known_groups = groups()
    choices = [f"{key}={value.split(',')[0]}" for key, value in pairs
               if key.split("/")[0] in known_groups and "." not in key and "(" not in value]
    candidates = [(key, value) for key, value in pairs if not key.startswith("hydra") and key.split("/")[0] not in known_groups]
    if not candidates:
        return []
    was_initialized = GlobalHydra.instance().is_initialized()
    if was_initialized:
        return []  # inside a running Hydra app: nothing to check
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            config = compose(config_name="train", overrides=choices)
    except Exception:  # noqa: BLE001 - a bad choice is Hydra's to report, in its own words
        return []
    known = _flat_keys(config) | known_groups
    lines = []
    for key, value in candidates:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=CUTOFF)
        if close:
            lines.append(f"error: {key}={value}: there is no knob {key!r}; did you mean {close[0]}? "
                         f"(`python -m ganlab.train --help` lists every knob)")
    return lines

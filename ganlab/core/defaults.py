"""The config's default values (conf/, the tutorial's setting), read without Hydra, for code that runs outside a job.

A sweep's comparison needs the setting every other group is compared with: the group at the
config's defaults. Hydra composes the config only at the entry points, so this reads the same
YAML files with OmegaConf, following what conf/train.yaml uses of Hydra's defaults list: the
group options it names in order, `_self_` where it stands (last when absent), and a group
file's `# @package` header (`_global_` merges at the top level). Options left null (such as
`experiment`) and Hydra's own groups and section are left out. tests/test_comparison.py
checks the result against Hydra's own composition.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the repository's Hydra config, as train.py finds it
PRIMARY_CONFIG = "train.yaml"
SELF = "_self_"
PACKAGE = re.compile(r"#\s*@package\s+(\S+)")


def config_defaults(conf_dir: str | Path = CONF_DIR) -> dict[str, str]:
    """Every knob's default value as a string, with dotted keys as a run's params have them
    (`dropout`, `optimizer.lr`, `loss.name`, ...). Knobs whose default is null, lists and
    interpolations are left out: a sweep's groups are told apart by plain values."""
    conf_dir = Path(conf_dir)
    primary = OmegaConf.load(conf_dir / PRIMARY_CONFIG)
    own = OmegaConf.masked_copy(primary, [key for key in primary if key not in ("defaults", "hydra")])
    entries = list(primary.get("defaults", []))
    if SELF not in entries:
        entries.append(SELF)
    merged = OmegaConf.create()
    for entry in entries:
        if entry == SELF:
            merged = OmegaConf.merge(merged, own)
            continue
        for group, option in (entry.items() if OmegaConf.is_dict(entry) else ()):
            path = conf_dir / str(group) / f"{option}.yaml"
            if option is None or not path.is_file():  # `experiment: null`, `override hydra/help: ...`
                continue
            merged = OmegaConf.merge(merged, _packaged(str(group), path))
    tree = OmegaConf.to_container(merged, resolve=False)
    return {key: str(value) for key, value in flatten(tree).items()
            if value is not None and not isinstance(value, list) and not str(value).startswith("${")}


def _packaged(group: str, path: Path):
    """A group option's values where Hydra puts them: under the group, or its `# @package`."""
    values = OmegaConf.load(path)
    package = group
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break  # the header is the file's leading comment lines
        if match := PACKAGE.match(line):
            package = match.group(1)
    if package == "_global_":
        return values
    package = group if package == "_group_" else package
    for part in reversed(package.split(".")):
        values = OmegaConf.create({part: values})
    return values


def flatten(config: dict, prefix: str = "") -> dict:
    """{'model': {'name': 'mlp'}} -> {'model.name': 'mlp'}: dotted keys, as a run's params have them; lists stay values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat

"""What a settle sweep asks (`settle.*` and the grid) and which seeds it runs, checked before anything is made.

`hydra/sweeper=settle` compares every setting of the override grid with a reference setting
(`ganlab.sweeps.settle` is the design). This module turns the composed config and the
command line into a `Question`: the settings (the grid, without `seed`: the sweeper picks
seeds), the reference (`settle.reference`, else the grid's setting equal to conf/'s defaults,
else the first), the metric (`settle.metric`, else the objective) and its epoch
(`settle.epoch`, else the last), `margin`, `alpha`, `pilot_seeds` and `max_seeds`. Every bad
value is one `InputError` naming the key and what is valid; the sweep callback
(`ganlab.sweeps.sweep`) checks it before the sweep's parent run exists, so a refused settle
sweep leaves nothing behind.

Seeds of a setting are 0, 1, 2, ... in order, skipping those already run (`ganlab.sweeps.settle_store`
finds them). Jobs are numbered setting by setting, pilot first, then stage 2: the same command
gives the same numbers, which is how `sweep.resume` finds each job's earlier run.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from ganlab.core import scores
from ganlab.core.config import SEED_KEY, param_key
from ganlab.core.errors import InputError

KEY = "settle"  # the config section of hydra/sweeper=settle
MARGIN_HELP = ("settle.margin: required: the smallest difference in settle.metric that matters to you, in the metric's "
               "units (a comparison whose interval lies inside +-margin is called equivalent), e.g. settle.margin=10 "
               "for fid.")


@dataclass
class Question:
    settings: list[tuple[str, ...]]  # each a tuple of `key=value` overrides, in grid order
    reference: tuple[str, ...]
    metric: str
    better: str
    epoch: int
    margin: float
    alpha: float
    pilot_seeds: int
    max_seeds: int
    common: list[str] = field(default_factory=list)  # the overrides every job gets

    def label(self, setting: tuple[str, ...]) -> str:
        return " ".join(setting) or "default"

    def values(self, setting: tuple[str, ...]) -> dict[str, str]:
        """{run param: value as typed} of a setting, e.g. {'loss.name': 'ns'}."""
        return {param_key(item.split("=", 1)[0].lstrip("+~")): item.split("=", 1)[1] for item in setting}


def question(config: DictConfig, overrides: list[str]) -> Question:
    """The settle question of a composed multirun `config` and its task overrides; InputError if ill-posed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    node = OmegaConf.select(config, KEY)
    if node is None:
        raise InputError("settle: hydra/sweeper=settle needs its settle.* keys (conf/hydra/sweeper/settle.yaml).")
    margin = _get(node, "margin")
    if margin is None:
        raise InputError(MARGIN_HELP)
    if not _is_number(margin) or margin <= 0:
        raise InputError(f"settle.margin: got {margin!r}; expected a positive number in the metric's units, e.g. settle.margin=10.")
    alpha = _get(node, "alpha")
    if not _is_number(alpha) or not 0 < alpha < 1:
        raise InputError(f"settle.alpha: got {alpha!r}; expected the error rate of all verdicts together, in (0, 1), e.g. 0.05.")
    pilot, most = _get(node, "pilot_seeds"), _get(node, "max_seeds")
    if not _is_int(pilot) or pilot < 2:
        raise InputError(f"settle.pilot_seeds: got {pilot!r}; expected an integer >= 2 (a variance needs two seeds), e.g. 3.")
    if not _is_int(most) or most < pilot:
        raise InputError(f"settle.max_seeds: got {most!r}; expected an integer >= settle.pilot_seeds ({pilot}), e.g. 20.")
    metric = _get(node, "metric") or OmegaConf.select(config, "objective")
    try:
        better = scores.direction(metric) if metric else None
    except KeyError:
        better = None
    if better is None:
        raise InputError(f"settle.metric: got {metric!r}; expected a score with a better direction "
                         f"({', '.join(scores.objective_names())}), e.g. settle.metric=fid.")
    epochs = OmegaConf.select(config, "epochs")
    epoch = _get(node, "epoch")
    epoch = epochs if epoch is None else epoch
    if not _is_int(epoch) or epoch < 1 or (_is_int(epochs) and epoch > epochs):
        raise InputError(f"settle.epoch: got {epoch!r}; expected null (the last epoch) or an evaluated epoch from 1 to "
                         f"epochs ({epochs}), e.g. settle.epoch={epochs}.")

    # A named sweep's grid (hydra.sweeper.params, e.g. sweeps/losses.yaml) counts like the command line's; its
    # seeds are the design's to choose, so a listed `seed` there gives way (the design starts at 0, 1, 2 too).
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    named = [f"{key}={value}" for key, value in params.items() if str(key).lstrip("+~") != SEED_KEY]
    parsed = OverridesParser.create().parse_overrides([*named, *(str(item) for item in overrides)])
    grid, common = {}, {}  # by key: the command line's value replaces a named sweep's, as in Hydra's BasicSweeper
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if key == SEED_KEY:
            raise InputError("seed: a settle sweep picks the seeds itself (0, 1, 2, ... per setting, as many as the "
                             "design needs); leave seed out of the command.")
        grid.pop(key, None)
        common.pop(key, None)
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise InputError(f"{override.input_line}: a settle sweep compares listed settings (key=a,b,c); "
                                 "ranges and intervals belong to the search sweep.")
            grid[key] = [f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
        elif not key.startswith((KEY + ".", "hydra", "sweep.")):
            common[key] = override.input_line
    settings = [tuple(items) for items in itertools.product(*grid.values())]
    if len(settings) < 2:
        raise InputError("settle: a settle sweep compares two or more settings; give a grid, e.g. dropout=0.1,0.3 "
                         "or loss=ns,hinge.")
    reference = _reference(_get(node, "reference"), settings)
    return Question(settings=settings, reference=reference, metric=metric, better=better, epoch=int(epoch),
                    margin=float(margin), alpha=float(alpha), pilot_seeds=int(pilot), max_seeds=int(most),
                    common=list(common.values()))


def _reference(asked, settings) -> tuple[str, ...]:
    """The setting `settle.reference` names, else the one at conf/'s defaults, else the first."""
    from ganlab.core.defaults import config_defaults

    if asked is None:
        defaults = config_defaults()
        for setting in settings:
            if all(_same(defaults.get(param_key(key.lstrip("+~"))), value)
                   for key, value in (item.split("=", 1) for item in setting)):
                return setting
        return settings[0]
    if OmegaConf.is_dict(asked):  # settle.reference={loss:ns}
        wanted = {str(key): str(value) for key, value in asked.items()}
    else:  # "settle.reference='loss=ns'"
        wanted = dict(item.split("=", 1) for item in str(asked).replace(",", " ").split() if "=" in item)
    for setting in settings:
        values = dict(item.split("=", 1) for item in setting)
        if wanted and all(_same(values.get(key), value) for key, value in wanted.items()) and set(wanted) <= set(values):
            return setting
    shown = "; ".join(" ".join(setting) for setting in settings)
    raise InputError(f"settle.reference: got {asked!r}; expected one of the grid's settings as key=value pairs "
                     f"({shown}), e.g. settle.reference={{{settings[0][0].replace('=', ':', 1)}}}.")


def jobs(question: Question, seeds_done: dict, seeds_wanted: dict) -> list[tuple[tuple[str, ...], int]]:
    """[(setting, seed)] to run, setting by setting, so that each setting has `seeds_wanted[setting]` seeds:
    the smallest seeds not in `seeds_done[setting]` (seeds already run, reused or failed)."""
    todo = []
    for setting in question.settings:
        done = set(seeds_done.get(setting, ()))
        missing = seeds_wanted.get(setting, 0) - len(done)
        todo += [(setting, seed) for seed in itertools.islice((s for s in itertools.count() if s not in done),
                                                               max(0, missing))]
    return todo


def job_overrides(question: Question, setting: tuple[str, ...], seed: int) -> list[str]:
    return [*question.common, *setting, f"{SEED_KEY}={seed}"]


def _same(left, right) -> bool:
    if left is None or right is None:
        return False
    try:
        return math.isclose(float(left), float(right))
    except (TypeError, ValueError):
        return str(left) == str(right)


def _get(node, key):
    return OmegaConf.select(node, key)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

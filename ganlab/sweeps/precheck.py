"""A sweep's pre-check: what every job will need, checked once, before any job or parent run exists.

The sweep callback (`ganlab.sweeps.sweep`) calls `check_sweep` first thing. It lists the jobs
the sweeper will launch (`planned_jobs`), composes each one's config as the launcher will
(Hydra's own config loader, `load_sweep_config`, with the sweep's Hydra overrides), and puts it
through the checks a job makes: `+new.key` refused (`ganlab.core.config.refuse_new_keys`), the
config's one pass (`ganlab.core.config.typed_config`, with the gan wing's choices), the data
file loaded and checked once per distinct `data.*` setting (`ganlab.core.data.load_dataset`,
then `validate_against_data` for each job that reads it), and each distinct store URI a job
writes to (`ganlab.tracking.store.check_uri`, and `check_server` for a server). The first
problem is an `InputError`: one paragraph naming the key, file or choice, what would be valid,
and the job it belongs to.

Which jobs: the basic sweeper's grid in full (its product, as `BasicSweeper.split_arguments`
builds it), `hydra/sweeper=settle`'s settings (`ganlab.sweeps.settle_plan`; its seeds are
chosen later and any seed is valid), and for a sweeper that chooses values later (`-cn search`,
Optuna) every value it may choose from: each choice, each end of an interval (a float interval's
upper end a step inside it, as a sampler never draws the end itself). A grid of more than
`MAX_JOBS` jobs is checked one key at a time: every distinct value of every swept key once,
the other keys at their first values.

Only bad input stops the sweep: a check that fails for another reason is logged and the job
left to report itself, as it would have without the pre-check.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ganlab.core import config as ganlab_config
from ganlab.core.data import load_dataset
from ganlab.core.errors import InputError
from ganlab.tracking import store as tracking

log = logging.getLogger(__name__)

MAX_JOBS = 64  # a larger grid is checked one key at a time (every value of every swept key once)
NOTHING_STARTED = "Nothing was started (no job ran, no MLflow run was made): fix it and run the sweep again."


@dataclass
class Plan:
    """The jobs to check: each a list of overrides (`key=value`), the keys with several values, and
    for a value drawn from a sweep expression (an interval's end) the expression it came from."""

    jobs: list[list[str]]
    swept: list[str]
    one_at_a_time: bool = False  # each job after the first differs from it in one value
    drawn_from: dict[str, str] = field(default_factory=dict)

    def label(self, job: list[str]) -> str:
        """`the sweep's job loss=nss`: the job by the values that tell it apart."""
        shown = [item for item in job if item.split("=", 1)[0].lstrip("+~") in self.swept]
        if self.one_at_a_time and job != self.jobs[0]:
            shown = [item for item, first in zip(job, self.jobs[0]) if item != first]
        shown = [f"{item} (from {self.drawn_from[item]})" if item in self.drawn_from else item for item in shown]
        return f"the sweep's job {' '.join(shown)}" if len(self.jobs) > 1 and shown else "the sweep's job"

    def refuse(self, message: str, job: list[str] | None = None, where: str | None = None) -> InputError:
        """The one paragraph: what is wrong, which job (or `where`), and that nothing was started."""
        return InputError(f"{message.rstrip('.')} ({where or self.label(job)}). {NOTHING_STARTED}")


def check_sweep(config: DictConfig, overrides: list[str]) -> int:
    """Check every job of the multirun `config` (its command-line `overrides` as typed): InputError, one
    paragraph, for the first bad key, choice, data file or store. Returns how many job configs were checked."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():  # only inside a running Hydra app is there a loader to compose with
        return 0
    loader = GlobalHydra.instance().config_loader()
    try:
        plan = planned_jobs(config, overrides, loader)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - not the user's: the sweeper and its jobs will say it themselves
        log.warning("sweep pre-check: could not list the sweep's jobs (%s: %s); they are not checked",
                    type(error).__name__, error)
        return 0
    composed = [(job, compose(loader, config, job, plan)) for job in plan.jobs]
    typed = [(job, checked) for job, cfg in composed if (checked := validate(cfg, job, plan)) is not None]
    check_data(typed, plan)
    check_stores(typed, plan)
    log.info("sweep pre-check: %d job configs, their data and store checked", len(plan.jobs))
    return len(plan.jobs)


def planned_jobs(config: DictConfig, overrides: list[str], loader=None) -> Plan:
    """The jobs to check of the multirun `config` (see the module's docstring for which)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ganlab.sweeps import settle_plan

    target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if OmegaConf.select(config, settle_plan.KEY) is not None:  # hydra/sweeper=settle: its settings, seeds come later
        question = settle_plan.question(config, overrides)  # InputError for an ill-posed question
        jobs = [settle_plan.job_overrides(question, setting, 0) for setting in question.settings]
        return Plan(jobs, [key for key, values in _values_by_key(jobs).items() if len(values) > 1])
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [*(f"{key}={value}" for key, value in params.items()), *overrides]
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(lines)
    except Exception as error:  # noqa: BLE001 - Hydra's own parse error, reworded as one paragraph
        raise InputError(f"{_first_paragraph(error)}. {NOTHING_STARTED}") from None
    choices: OrderedDict[str, list[str]] = OrderedDict()  # a later line for a key wins, as in Hydra's sweepers
    drawn_from = {}
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_interval_sweep():
            choices[key] = [f"{key}={value}" for value in _interval_ends(override.value())]
            drawn_from.update({item: override.input_line or key for item in choices[key]})
        else:
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
    swept = [key.lstrip("+~") for key, values in choices.items() if len(values) > 1]
    grid = math.prod(len(values) for values in choices.values())
    if target.endswith("BasicSweeper") and grid <= MAX_JOBS:
        return Plan([list(job) for job in itertools.product(*choices.values())], swept)
    return Plan(one_at_a_time(list(choices.values())), swept, one_at_a_time=True, drawn_from=drawn_from)


def one_at_a_time(values: list[list[str]]) -> list[list[str]]:
    """Jobs that between them use every value of every key once: the first values, then each other value alone."""
    first = [options[0] for options in values]
    jobs = [first]
    for index, options in enumerate(values):
        jobs += [first[:index] + [option] + first[index + 1:] for option in options[1:]]
    return jobs


def _interval_ends(interval) -> list:
    """The values of `interval(start, end)` a sampler may draw that lie furthest out: an int interval's two
    ends (drawn inclusive), a float interval's start and the float just below its end."""
    start, end = interval.start, interval.end
    if isinstance(start, int) and isinstance(end, int):
        return [start, end]
    return [float(start), math.nextafter(float(end), float(start))]


def _values_by_key(jobs: list[list[str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for job in jobs:
        for item in job:
            key, _, value = item.partition("=")
            found.setdefault(key.lstrip("+~"), set()).add(value)
    return found


def compose(loader, config: DictConfig, job: list[str], plan: Plan) -> DictConfig | None:
    """The job's config as its launcher composes it, without Hydra's section (as the job receives it);
    InputError naming the choice or key Hydra could not compose. None where composing failed otherwise."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        composed = loader.load_sweep_config(config, list(job))
    except MissingConfigException as error:
        group, _, name = str(error.missing_cfg_file or "").rpartition("/")
        if group and error.options:
            raise plan.refuse(f"{group}={name}: there is no {group} option {name!r}; valid: {', '.join(error.options)}",
                              job) from None
        raise plan.refuse(_first_paragraph(error), job) from None
    except (HydraException, OmegaConfBaseException) as error:
        unknown = re.match(r"Could not override '([^']+)'", str(error))
        if unknown:  # not Hydra's advice to add it with '+': a key nothing reads would be trained with silently
            raise plan.refuse(f"{unknown[1]}: there is no such knob; `python -m ganlab.train --help` lists them", job) from None
        raise plan.refuse(_first_paragraph(error), job) from None
    except Exception as error:  # noqa: BLE001 - not the user's: the job will say it itself
        log.warning("sweep pre-check: could not compose %s: %s: %s", job, type(error).__name__, error)
        return None
    task = copy.deepcopy(composed)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def validate(cfg: DictConfig | None, job: list[str], plan: Plan):
    """The job's own checks on its composed config: a new key refused, then the one pass into `JobConfig`.
    InputError naming the key and the job; None where a check failed for another reason."""
    if cfg is None:
        return None
    from ganlab.gan import choices  # the choices' builders: what a job checks its group names against

    try:
        ganlab_config.refuse_new_keys(job)
        return ganlab_config.typed_config(cfg, choices.registries())
    except InputError as error:
        raise plan.refuse(str(error), job) from None
    except Exception as error:  # noqa: BLE001 - not the user's: the job will say it itself
        log.warning("sweep pre-check: could not check %s: %s: %s", job, type(error).__name__, error)
        return None


def check_data(typed: list, plan: Plan) -> None:
    """Each distinct data setting loaded and checked once; each job's batch against its training set."""
    sizes: dict[tuple, int] = {}
    for job, cfg in typed:
        where = (cfg.data.name, cfg.data.path, cfg.data.download)
        if where not in sizes:
            readers = sum(1 for _, other in typed if (other.data.name, other.data.path, other.data.download) == where)
            try:
                sizes[where] = len(load_dataset(*where).x_train)
            except InputError as error:
                every = readers == len(typed) and len(plan.jobs) > 1
                raise plan.refuse(str(error), job, "every job of the sweep reads it" if every else None) from None
        try:
            ganlab_config.validate_against_data(cfg, sizes[where])
        except InputError as error:
            raise plan.refuse(str(error), job) from None


def check_stores(typed: list, plan: Plan) -> None:
    """Each distinct store a job writes to: its URI, and a server's answer (the sweep's own store is opened next)."""
    for uri in dict.fromkeys(tracking.resolve_uri(cfg.tracking.uri) for _, cfg in typed):
        try:
            tracking.check_uri(uri)
            if uri.startswith(("http://", "https://")):
                tracking.check_server(uri)
        except InputError as error:
            raise plan.refuse(str(error), where="the store the sweep's jobs write to") from None


def _first_paragraph(error: BaseException) -> str:
    """Hydra's message up to its first blank line, on one line."""
    text = str(error).strip().split("\n\n", 1)[0]
    return " ".join(text.split()).rstrip(".")


"""What a search over settings asks and what it reports: the search space, a trial's value over seeds.

`-cn search` (sweeps/search.yaml, the sweeper `hydra_plugins/ganlab_sweepers/search.py`) asks
Optuna for settings and scores each over `search.seeds` seeds (0, 1, ...), one job per seed.
This module holds the parts without Hydra's plugin machinery:

- the search space: Hydra's sweep syntax (`interval(a, b)`, `tag(log, interval(a, b))`,
  `choice(...)`, `range(...)`), from `hydra.sweeper.params` and the command line (where a plain
  value fixes a key), as Optuna 4 distributions;
- a trial's value: the mean of its seeds' scores, with the 95% Student t interval of that mean
  (df = seeds - 1; `ganlab.sweeps.seed_stats.summarize`), and its line for the console;
- the report: `optimization_results.yaml` (the best trial with its interval, and every trial).

A trial clearly worse than the best so far stops before its remaining seeds: after each seed
it reports that seed's score at step = seed index, and Optuna's WilcoxonPruner runs the
Wilcoxon signed-rank test (F. Wilcoxon, "Individual comparisons by ranking methods",
Biometrics Bulletin 1:80-83, 1945) on its scores paired by seed with the best trial's,
stopping it when the one-sided p-value is below `search.prune_p`. With n paired seeds that
p-value is at least 1/2^n (every seed worse), so with 3 seeds a trial can only stop after its
second seed, and only if prune_p exceeds 0.25: hence sweeps/search.yaml's 0.3, a saving rather
than a test at a conventional level (a trial exactly as good as the best stops early one time in
four; one truly better, less often; Optuna's WilcoxonPruner also never stops a trial whose mean
so far beats the best's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Transformer

from ganlab.core import scores
from ganlab.core.config import SEED_KEY  # the sweeper runs seeds 0 .. search.seeds - 1 itself
from ganlab.core.errors import InputError
from ganlab.sweeps import seed_stats

KEY = "search"  # the config section of a search: search.seeds, search.prune_p
STUDY_FILE = "optuna.db"  # the study's SQLite storage in the sweep folder, unless hydra.sweeper.storage names one
RESULTS_FILE = "optimization_results.yaml"  # in the sweep folder; the sweep callback logs it under summary/
INTERVAL = f"{seed_stats.CONFIDENCE:.0%} Student t interval of the seed mean (df = seeds - 1)"
# Tags of the sweep's parent run: where its study is (sweep.resume continues it) and the best trial.
STORAGE_TAG, STUDY_TAG = "search.storage", "search.study"
BEST_TAGS = ("search.best.trial", "search.best.value", "search.best.interval", "search.best.overrides",
             "search.best.seeds")
TRIAL_TAG = "search.trial"  # a job's trial number (each trial is search.seeds jobs)


@dataclass
class TrialRecord:
    """One trial as the search saw it: its setting and its seeds' scores, by seed index."""

    number: int
    params: dict
    values: dict[int, float] = field(default_factory=dict)
    state: str = "running"  # running, complete, pruned, failed
    jobs: dict[int, int] = field(default_factory=dict)  # seed index -> the sweep job number that runs it
    run_ids: list[str] = field(default_factory=list)

    @property
    def summary(self) -> seed_stats.Summary:
        return seed_stats.summarize(self.values[index] for index in sorted(self.values))

    def overrides(self) -> list[str]:
        return [f"{name}={value}" for name, value in self.params.items()]

    def line(self, objective: str, seeds: int) -> str:
        """`trial 3: fid 123 [110, 136] (3 seeds; lr=...)`, or `... pruned after 2 of 3 seeds`."""
        summary = self.summary
        mean, low, high = scores.format_column(objective, [summary.mean, summary.ci_low, summary.ci_high])
        value = f"{objective} {mean}" + (f" [{low}, {high}]" if summary.n > 1 else "")
        how = {"complete": f"{summary.n} seeds", "pruned": f"pruned after {summary.n} of {seeds} seeds: worse than "
               "the best trial so far, paired by seed", "failed": f"failed after {summary.n} of {seeds} seeds"}
        return f"trial {self.number}: {value} ({how.get(self.state, self.state)}; {' '.join(self.overrides())})"

    def report(self) -> dict:
        summary = self.summary
        return {"number": self.number, "state": self.state, "params": dict(self.params),
                "seeds": {index: self.values[index] for index in sorted(self.values)},
                "value": plain(summary.mean), "interval": [plain(summary.ci_low), plain(summary.ci_high)],
                "run_ids": list(self.run_ids)}


def search_space(lines: list[str]) -> tuple[dict, dict]:
    """({key: Optuna distribution}, {key: fixed value as typed}) of `key=value` lines; a later
    line for a key wins, so a plain value on the command line fixes a key the params search."""
    import optuna.distributions as dist

    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if key.lstrip("+~") == SEED_KEY:
            raise InputError(f"{SEED_KEY}: a search runs the seeds 0 .. {KEY}.seeds - 1 of every trial itself; leave "
                             f"{SEED_KEY} out and set how many with {KEY}.seeds=N.")
        if not override.is_sweep_override():
            fixed[key] = override.get_value_element_as_str()
        elif override.is_interval_sweep():
            value = override.value()
            log = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                space[key] = dist.IntDistribution(value.start, value.end, log=log)
            else:
                space[key] = dist.FloatDistribution(float(value.start), float(value.end), log=log)
        elif override.is_range_sweep() and not override.value().shuffle:
            value = override.value()
            if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
                space[key] = dist.IntDistribution(value.start, value.stop - value.step, step=value.step)
            else:
                space[key] = dist.CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        else:  # choice(...), a comma list, a shuffled range
            space[key] = dist.CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if not space:
        raise InputError("hydra.sweeper.params: a search needs at least one key to search, e.g. "
                         "hydra.sweeper.params.dropout='interval(0.0, 0.6)' (sweeps/search.yaml has three).")
    return space, fixed


def check_settings(seeds, prune_p, n_trials) -> None:
    """One paragraph per bad value of the search's own knobs."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise InputError(f"{KEY}.seeds: {seeds!r} is not a whole number of seeds per trial; give 1 or more, "
                         f"e.g. {KEY}.seeds=3 (with 1, trials are neither given an interval nor pruned).")
    if not isinstance(prune_p, (int, float)) or isinstance(prune_p, bool) or not 0 <= prune_p <= 1:
        raise InputError(f"{KEY}.prune_p: {prune_p!r} is not a p-value threshold in [0, 1]; e.g. {KEY}.prune_p=0.1 "
                         "(0 never stops a trial early).")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise InputError(f"hydra.sweeper.n_trials: {n_trials!r} is not a whole number of trials; give 1 or more.")


def pruning_note(seeds: int, prune_p: float) -> str:
    """When the pruner can stop a trial: Wilcoxon's smallest one-sided p with n paired seeds is 1 / 2^n
    (every seed worse), so a trial stops after n seeds at the earliest where 1 / 2^n < prune_p, n >= 2."""
    if prune_p <= 0:
        return "no trial is stopped early (search.prune_p=0)"
    earliest = next((n for n in range(2, seeds) if 0.5 ** n < prune_p), None)
    if earliest is None:
        return (f"no trial can be stopped early: with {seeds} seeds and search.prune_p={prune_p} (the smallest "
                f"one-sided Wilcoxon p after n paired seeds is 1/2^n; raise search.seeds or search.prune_p)")
    return (f"a trial worse than the best on its first {earliest} seeds (Wilcoxon p < {prune_p}, paired by seed) "
            "stops there at the earliest")


def results(trials: list[TrialRecord], best: TrialRecord | None, *, objective: str, direction: str, seeds: int,
            study: str, storage: str) -> dict:
    """The content of optimization_results.yaml."""
    report = {"name": "ganlab_search", "study": study, "storage": storage, "objective": objective,
              "direction": direction, "seeds_per_trial": seeds, "interval": INTERVAL}
    if best is not None:
        summary = best.summary
        report.update(best_trial=best.number, best_params=dict(best.params), best_value=plain(summary.mean),
                      best_interval=[plain(summary.ci_low), plain(summary.ci_high)], best_run_ids=list(best.run_ids))
    report["trials"] = [trial.report() for trial in sorted(trials, key=lambda trial: trial.number)]
    return report


def best_tags(best: TrialRecord) -> dict[str, str]:
    summary = best.summary
    values = (str(best.number), str(summary.mean), f"[{summary.ci_low}, {summary.ci_high}]", " ".join(best.overrides()),
              str(summary.n))
    return dict(zip(BEST_TAGS, values))


def closing_line(tags: dict[str, str], objective: str) -> str | None:
    """The sweep's closing `best setting: ...` line for a search, from its parent's `search.best.*` tags: the best
    complete trial, its seed mean and interval (the grid's line, `ganlab.sweeps.sweep.best_line`, would pick the
    best single job, possibly of a pruned trial). None for a parent without them (not a search, or no trial done)."""
    trial, value, interval, overrides, seeds = (tags.get(key) for key in BEST_TAGS)
    if value is None:
        return None
    low, _, high = (interval or "[nan, nan]").strip("[]").partition(", ")
    # the registry's precision, one number of decimals for the mean and its interval (as the grid's line)
    shown_value, shown_low, shown_high = scores.format_column(objective, [float(value), float(low), float(high)])
    metric = scores.lookup(objective)
    better = f"; {metric.better} is better" if metric is not None and metric.better else ""
    spread = (f"95% interval {shown_low} to {shown_high}" + (f" over {seeds} seeds" if seeds else "")
              if "nan" not in (low, high)
              else f"one seed, so no interval: raise {KEY}.seeds")
    return f"best setting: {overrides}: {objective} {shown_value} ({spread}{better}; trial {trial}, the seed mean)"


def plain(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)

"""The sweeper of `-cn search` (`hydra/sweeper=search`): an Optuna 4 study, each trial scored over seeds.

Hydra instantiates sweepers only from the `hydra_plugins` namespace; its config (the knobs
below and their defaults) is conf/hydra/sweeper/search.yaml, beside settle's; what a search asks and
reports (the search space, a trial's mean and interval, the pruning test) is
`ganlab.sweeps.search`'s. The sweeper drives Optuna's ask-and-tell interface:

- it asks for up to `hydra.sweeper.n_jobs` trials at a time and runs seed 0 of each as one
  batch, then seed 1, ... (`search.seeds`, default 3), every seed a job of the sweep through
  `self.launcher.launch`, so any launcher (basic, parallel, slurm) runs them, each job a child
  run of the sweep's parent run;
- after each seed the trial reports that seed's score (step = seed index); a trial the
  WilcoxonPruner (Wilcoxon 1945, paired by seed with the best trial) finds clearly worse is
  told PRUNED and its remaining seeds never run; a trial with all its seeds is told the mean;
- at the end the best complete trial goes to the parent run's `search.best.*` tags (from which
  the sweep callback prints it, once, as the sweep's closing `best setting` line) and to
  `optimization_results.yaml` (logged under the parent's summary/), with its
  95% Student t interval.

The study lives in RDB storage: `optuna.db` (SQLite) in the sweep folder unless
`hydra.sweeper.storage` names another (e.g. a PostgreSQL URL). The parent run's tags say
where, so `sweep.resume=<parent run id>` continues the same study: finished trials stay,
interrupted ones go on with their missing seeds (an interrupted seed continues its own run
from its checkpoint: every seed keeps its job number, recorded on its trial), and new trials
fill up to `n_trials`. Without Optuna (the `scale` extra) a search stops with one line.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ganlab.core import scores
from ganlab.core.errors import InputError
from ganlab.sweeps import search
from ganlab.sweeps import sweep as sweep_tracking
from ganlab.tracking import store as tracking

log = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[scale]"'
JOB_ATTR = "ganlab.job."  # + seed index: the sweep job number of that seed of the trial (user attr)
PARENT_ATTR = "ganlab.parent_run_id"  # the study's sweep (user attr of the study)


class SearchSweeper(Sweeper):
    def __init__(self, direction: str, seeds: int, prune_p: float, n_trials: int, n_jobs: int = 1,
                 study_name: str = "ganlab_search", storage: str | None = None, sampler: Any = None,
                 params: Any = None):
        self.direction, self.seeds, self.prune_p = direction, seeds, prune_p
        self.n_trials, self.n_jobs = n_trials, max(1, int(n_jobs))
        self.study_name, self.storage, self.sampler_config = study_name, storage, sampler
        self.params = params or {}
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> list:
        try:
            import optuna
        except ImportError:
            refuse(f"-cn search needs Optuna, which is in the scale extra: {INSTALL}")
        try:
            search.check_settings(self.seeds, self.prune_p, self.n_trials)
            lines = [*(f"{key}={value}" for key, value in self.params.items()), *arguments]
            self.space, self.fixed = search.search_space(lines)
            self.client, _ = tracking.open_store(self.config.tracking.uri, self.config.tracking.experiment)
            study, reopened = self._study(optuna)
        except InputError as error:
            refuse(str(error))
        self.objective = self.config.get("objective")
        self.records: dict[int, search.TrialRecord] = {}
        for frozen in study.get_trials(deepcopy=False):
            state = STATES.get(frozen.state.name, "running")
            self.records[frozen.number] = search.TrialRecord(frozen.number, dict(frozen.params),
                                                             dict(frozen.intermediate_values), state, _job_numbers(frozen))
        self.next_job = 1 + max((num for record in self.records.values() for num in record.jobs.values()), default=-1)
        active = [optuna.trial.Trial(study, frozen._trial_id) for frozen in reopened]  # public constructor, private id
        asked = len(study.trials)
        while active or asked < self.n_trials:
            while len(active) < self.n_jobs and asked < self.n_trials:
                trial = study.ask(dict(self.space))
                self.records[trial.number] = search.TrialRecord(trial.number, dict(trial.params))
                active.append(trial)
                asked += 1
            active = self._round(study, active)
        return self._finish()

    # ------------------------------------------------------------------------------------- the study

    def _study(self, optuna):
        """The study (created, or the resumed sweep's, loaded) and its trials left RUNNING by an interrupted run."""
        parent_id = self.parent_id = sweep_tracking.read_sweep_file(self.sweep_dir).get("parent_run_id")
        sampler = instantiate(self.sampler_config) if self.sampler_config else None
        with warnings.catch_warnings():  # "experimental" since Optuna 3.6: said once here, in the docs, not per search
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = optuna.pruners.WilcoxonPruner(p_threshold=self.prune_p) if self.prune_p > 0 else optuna.pruners.NopPruner()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper says what happens, one line per trial
        resumed = OmegaConf.select(self.config, sweep_tracking.RESUME_KEY)
        if resumed:
            tags = self.client.get_run(parent_id).data.tags
            if search.STORAGE_TAG not in tags:
                raise InputError(f"{sweep_tracking.RESUME_KEY}: sweep {parent_id} has no Optuna study (no "
                                 f"{search.STORAGE_TAG} tag): it was not a search, or it started before searches "
                                 "kept their study; continue it with the command that started it.")
            self.storage, self.study_name = tags[search.STORAGE_TAG], tags[search.STUDY_TAG]
            try:
                study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                          pruner=pruner)
            except KeyError:
                raise InputError(f"{sweep_tracking.RESUME_KEY}: the study {self.study_name!r} of sweep {parent_id} "
                                 f"is not in {self.storage} any more; it cannot be continued.") from None
            if study.user_attrs.get("seeds") != self.seeds:
                raise InputError(f"search.seeds: sweep {parent_id} ran {study.user_attrs.get('seeds')} seeds per "
                                 f"trial, not {self.seeds}; continue it with search.seeds={study.user_attrs.get('seeds')}.")
            reopened = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
            print(f"ganlab: search: continuing study {self.study_name!r} in {self.storage}: "
                  f"{len(study.trials) - len(reopened)} trials done, {len(reopened)} interrupted", flush=True)
            return study, reopened
        self.storage = self.storage or f"sqlite:///{(self.sweep_dir / search.STUDY_FILE).resolve()}"
        try:
            study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                        pruner=pruner, direction=self.direction)
        except optuna.exceptions.DuplicatedStudyError:
            raise InputError(f"hydra.sweeper.study_name: {self.study_name!r} already exists in {self.storage}; "
                             "name another (hydra.sweeper.study_name=...), or continue its sweep with "
                             f"{sweep_tracking.RESUME_KEY}=<its parent run id>.") from None
        study.set_user_attr("seeds", self.seeds)
        study.set_user_attr(PARENT_ATTR, parent_id)
        self.client.log_batch(parent_id, tags=[_tag(search.STORAGE_TAG, self.storage), _tag(search.STUDY_TAG, self.study_name)])
        print(f"ganlab: search: study {self.study_name!r} ({self.direction} {self.config.get('objective')}, "
              f"{self.n_trials} trials x {self.seeds} seeds) in {self.storage}; "
              f"{search.pruning_note(self.seeds, self.prune_p)}", flush=True)
        return study, []

    # ------------------------------------------------------------------------------------- one round

    def _round(self, study, active: list) -> list:
        """Runs the next seed of every active trial as one batch of jobs; returns the trials still going."""
        jobs = []  # (trial, seed index, job number, overrides)
        for trial in active:
            record = self.records[trial.number]
            index = min(set(range(self.seeds)) - set(record.values))
            if index not in record.jobs:  # a seed interrupted earlier keeps its number, so its job continues its run
                record.jobs[index], self.next_job = self.next_job, self.next_job + 1
                trial.set_user_attr(f"{JOB_ATTR}{index}", record.jobs[index])
            overrides = [*(f"{key}={value}" for key, value in self.fixed.items()),
                         *(f"{key}={value}" for key, value in trial.params.items()), f"{search.SEED_KEY}={index}"]
            jobs.append((trial, index, record.jobs[index], overrides))
        returns = {}
        for batch in _consecutive(sorted(jobs, key=lambda job: job[2])):
            launched = self.launcher.launch([job[3] for job in batch], initial_job_idx=batch[0][2])
            returns.update({job[2]: result for job, result in zip(batch, launched)})
        going = []
        for trial, index, number, _ in jobs:
            record = self.records[trial.number]
            value = self._value(returns[number], number)
            if math.isnan(value):
                record.state, state, told = "failed", "FAIL", None
            else:
                record.values[index] = value
                trial.report(value, step=index)
                if len(record.values) == self.seeds:
                    record.state, state, told = "complete", "COMPLETE", record.summary.mean
                elif trial.should_prune():
                    record.state, state, told = "pruned", "PRUNED", None
                else:
                    going.append(trial)
                    continue
            summary = record.summary
            for key, value in (("mean", summary.mean), ("ci_low", summary.ci_low), ("ci_high", summary.ci_high)):
                trial.set_user_attr(key, search.plain(value))
            study.tell(trial, told, state=_state(state))
            print(f"ganlab: search: {record.line(self.objective, self.seeds)}", flush=True)
        return going

    def _runs_by_job(self) -> dict:
        """{job number (as tagged): run} of the sweep's children."""
        experiment_id = self.client.get_run(self.parent_id).info.experiment_id
        _, children = tracking.sweep_children(self.client, experiment_id, self.parent_id)
        return {child.data.tags.get(tracking.JOB_NUM_TAG): child for child in children}

    def _value(self, result, number: int) -> float:
        """The score a seed's job returned (NaN for a failed job); a job that had finished before (a
        continued sweep) returns nothing, and its run's score is read instead."""
        try:
            value = result.return_value
        except Exception:  # noqa: BLE001 - the job's own log and run say why; the trial fails
            return math.nan
        if value is None:
            from ganlab.sweeps import ranking

            run = self._runs_by_job().get(str(number))
            if run is not None and run.info.status == "FINISHED":
                value = run.data.metrics.get(ranking.returned_metric(run, self.objective, self.config.get("objective_at")))
        return math.nan if value is None else float(value)

    # ------------------------------------------------------------------------------------- the end

    def _finish(self) -> list:
        """The best complete trial, reported; every job's run tagged with its trial."""
        runs = self._runs_by_job()
        for record in self.records.values():
            record.run_ids = [runs[str(num)].info.run_id for _, num in sorted(record.jobs.items()) if str(num) in runs]
            for run_id in record.run_ids:
                self.client.set_tag(run_id, search.TRIAL_TAG, str(record.number))
        complete = [record for record in self.records.values() if record.state == "complete"]
        best = scores.pick_best(self.objective, complete, lambda record: record.summary.mean) if complete else None
        report = search.results(list(self.records.values()), best, objective=self.objective, direction=self.direction,
                                seeds=self.seeds, study=self.study_name, storage=self.storage)
        OmegaConf.save(OmegaConf.create(report), self.sweep_dir / search.RESULTS_FILE)
        if best is None:
            print("ganlab: search: no trial completed all its seeds", flush=True)
            return []
        # The best trial's line closes the sweep once, before its URLs: the sweep callback reads these tags.
        self.client.log_batch(self.parent_id, tags=[_tag(key, value) for key, value in search.best_tags(best).items()])
        return [best.params]


def refuse(message: str):
    """One paragraph on stderr, exit 1 (not an Exception: Hydra would print a traceback); the parent run ends FAILED."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}  # Optuna's trial states, as reported


def _job_numbers(frozen) -> dict[int, int]:
    return {int(key[len(JOB_ATTR):]): value for key, value in frozen.user_attrs.items() if key.startswith(JOB_ATTR)}


def _consecutive(jobs: list) -> list[list]:
    """The jobs (sorted by number) split where numbers are not consecutive: a launcher numbers a batch from its first."""
    batches = []
    for job in jobs:
        if batches and batches[-1][-1][2] + 1 == job[2]:
            batches[-1].append(job)
        else:
            batches.append([job])
    return batches


def _state(name: str):
    import optuna

    return optuna.trial.TrialState[name]


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)

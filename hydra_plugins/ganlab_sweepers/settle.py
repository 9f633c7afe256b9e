"""The sweeper of `hydra/sweeper=settle`: seeds spent where a comparison is still open.

    python -m ganlab.train -m hydra/sweeper=settle loss=ns,hinge settle.margin=10 epochs=10

The grid's settings are compared with a reference setting on one score (`ganlab.sweeps.settle_plan`
reads the question). Stage 1 runs `settle.pilot_seeds` seeds of every setting; from their spread
the design (`ganlab.sweeps.settle`, Chapman 1950) says how many seeds each setting needs so that
every comparison's interval is at most margin/2 wide; stage 2 runs those, at most
`settle.max_seeds`. Seeds already in the store with the same setting and scoring are reused
(`ganlab.sweeps.settle_store`). The verdicts (better, worse, equivalent, undecided) are printed
and put first on the sweep's parent run (`ganlab.sweeps.settle_report`).

Like Hydra's BasicSweeper it only hands batches of jobs to `self.launcher.launch`, so every
launcher works (basic, parallel, slurm). Jobs are numbered setting by setting, pilot first:
the same command numbers them the same, so `sweep.resume` skips finished jobs and continues
the others. Scores are read from MLflow, not from the jobs' return values, so a job skipped by
a resume or run on another node counts the same.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SettleSweeper(Sweeper):
    def __init__(self, params: dict | None = None, seeds: int | None = None) -> None:
        """`params`: a named sweep's grid (`hydra.sweeper.params`), read with the command line's by settle_plan.
        `seeds`: the pilot's seeds per setting (conf/hydra/sweeper/settle.yaml); it says, as a search's does, that
        the sweeper runs seeds itself, so the sweep callback counts `seed` among the swept keys."""
        super().__init__()
        self.params, self.seeds = params or {}, seeds
        self.config = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function,
                                                                config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from ganlab.core.errors import InputError
        from ganlab.sweeps import settle, settle_plan, settle_report, settle_store
        from ganlab.sweeps import sweep as sweep_tracking
        from ganlab.tracking import store as tracking

        try:
            question = settle_plan.question(self.config, arguments)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        found = sweep_tracking.read_sweep_file(sweep_dir)
        parent_id = found.get("parent_run_id")
        if parent_id is None:
            raise SystemExit("error: hydra/sweeper=settle needs ganlab's sweep callback (conf/train.yaml's "
                             "hydra.callbacks.sweep_tracking): it reads the scores of the sweep's runs.")
        client, experiment_id = tracking.open_store(self.config.tracking.uri, self.config.tracking.experiment)

        scores, reused = self.reuse(client, experiment_id, parent_id, question)
        numbered: dict[int, tuple] = {}  # job number -> (setting, seed)
        tried: dict[tuple, set] = {setting: set(scores[setting]) for setting in question.settings}
        returns = []

        def run_stage(wanted: dict) -> None:
            todo = settle_plan.jobs(question, tried, wanted)
            if not todo:
                return
            first = len(numbered)
            for offset, (setting, seed) in enumerate(todo):
                numbered[first + offset] = (setting, seed)
                tried[setting].add(seed)
            batch = [settle_plan.job_overrides(question, setting, seed) for setting, seed in todo]
            self.validate_batch_is_legal(batch)
            returns.append(self.launcher.launch(batch, initial_job_idx=first))
            finished = settle_store.own_children(client, experiment_id, parent_id)
            for job_num, (setting, seed) in numbered.items():
                if job_num in finished and seed not in scores[setting]:
                    value = settle_store.score_at(client, finished[job_num].info.run_id, question.metric, question.epoch)
                    if value is not None:
                        scores[setting][seed] = value

        run_stage({setting: question.pilot_seeds for setting in question.settings})
        h = settle.critical_value(question.pilot_seeds, question.alpha, len(question.settings) - 1)
        reference_pilot = [scores[question.reference][seed] for seed in sorted(scores[question.reference])][:question.pilot_seeds]
        reference_infinite = not all(map(math.isfinite, reference_pilot))  # then no comparison can be settled
        wanted = {}
        for setting in question.settings:
            values = [scores[setting][seed] for seed in sorted(scores[setting])]
            if len(values) < question.pilot_seeds or reference_infinite:  # a pilot job failed, or nothing to settle
                wanted[setting] = len(tried[setting])
                continue
            pilot_std = settle.sample_std(values[:question.pilot_seeds])
            planned = int(settle.seeds_planned(pilot_std, question.margin, h, question.pilot_seeds,
                                               question.max_seeds, available=len(values)))
            wanted[setting] = planned + len(tried[setting]) - len(values)  # failed seeds are not run again
            if math.isnan(pilot_std):  # an infinite pilot score: more seeds cannot settle it
                print(f"ganlab: settle: {question.label(setting)}: a pilot seed scored inf, so its comparison has no "
                      "interval and ends undecided; no more seeds are run for it", flush=True)
                continue
            needed = int(settle.seeds_needed(pilot_std, question.margin, h, question.pilot_seeds))
            print(f"ganlab: settle: {question.label(setting)}: pilot std {pilot_std:.4g}, needs {needed} seeds"
                  + (f", capped at settle.max_seeds={question.max_seeds}: its comparison may end undecided"
                     if needed > question.max_seeds else "") + f"; {max(0, planned - len(values))} more to run",
                  flush=True)
        if reference_infinite:
            print(f"ganlab: settle: the reference {question.label(question.reference)} scored inf on a pilot seed, so no "
                  "comparison has an interval and all end undecided; no more seeds are run", flush=True)
        run_stage(wanted)

        values = {setting: [scores[setting][seed] for seed in sorted(scores[setting])] for setting in question.settings}
        rows = settle.compare(values, question.reference, question.margin, question.alpha, question.pilot_seeds,
                              question.max_seeds, question.better)
        text = settle_report.write(sweep_dir / sweep_tracking.SUMMARY, question, rows, reused)
        for key, value in settle_report.tags(question, rows).items():
            client.set_tag(parent_id, key, value)
        print(f"\n{text}", flush=True)
        return returns

    def reuse(self, client, experiment_id: str, parent_id: str, question):
        """({setting: {seed: score}}, {setting label: [seeds]}) of the seeds already run elsewhere, each copied
        under this sweep once (a resumed sweep finds its copies) and counted like its own."""
        from ganlab.core.errors import InputError
        from ganlab.sweeps import settle_store
        from ganlab.tracking import store as tracking

        copies = settle_store.reused_children(client, experiment_id, parent_id)
        scores: dict[tuple, dict[int, float]] = {setting: {} for setting in question.settings}
        reused: dict[str, list[int]] = {}
        protocols: dict[str, dict[str, str]] = {}  # by data and classifier: each file is read once

        def protocol(composed: dict) -> dict[str, str]:
            where = json.dumps([composed.get("data"), composed.get("eval", {}).get("classifier")], sort_keys=True,
                               default=str)
            if where not in protocols:
                protocols[where] = settle_store.protocol(composed)
            return protocols[where]

        for setting in question.settings:
            composed = self.job_config(question, setting)
            try:  # the data and the classifier are read only when a run in the store could be reused
                earlier = settle_store.reusable(client, experiment_id, parent_id, tracking.run_params(composed),
                                                question.metric, question.epoch,
                                                protocol_tags=lambda composed=composed: protocol(composed))
            except InputError as error:
                print(f"error: {error}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            for seed, run in sorted(earlier.items()):
                if run.info.run_id not in copies:
                    copies[run.info.run_id] = settle_store.copy_as_child(client, run, parent_id, experiment_id)
                scores[setting][seed] = settle_store.score_at(client, run.info.run_id, question.metric, question.epoch)
                reused.setdefault(question.label(setting), []).append(seed)
        if reused:
            log.info("settle: reused seeds already in the store: %s", reused)
        return scores, reused

    def job_config(self, question, setting) -> dict:
        """The resolved config (without `hydra`) Hydra would compose for a job of `setting` (seed aside)."""
        from ganlab.sweeps import settle_plan

        composed = self.hydra_context.config_loader.load_sweep_config(
            self.config, settle_plan.job_overrides(question, setting, 0))
        own = OmegaConf.masked_copy(composed, [key for key in composed if key != "hydra"])
        return OmegaConf.to_container(own, resolve=True)


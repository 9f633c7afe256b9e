"""Sweep tracking: one MLflow parent run per Hydra multirun, closed with its summary.

`SweepTracking` is a Hydra callback (registered in conf/train.yaml). When a multirun
starts it creates the store, the experiment and the parent run (named by what is swept,
e.g. `sweep dropout x label_smoothing`), and leaves the parent's id and the swept keys
in the sweep folder, where every job (in this process or another) finds them. When the
multirun ends it hands the children to `ganlab.sweep_report`, logs the summary on the
parent (files, the best job's scores and swept values, a Markdown description) and
closes it. A sweep with a failed job ends FAILED and exits non-zero; one stopped by
Ctrl-C or SIGTERM ends KILLED, and one that dies of an error FAILED: never RUNNING.

Importing this module also registers the OmegaConf resolver `ganlab.direction`:
`${ganlab.direction:${objective}}` is `minimize` or `maximize` as the score registry says
for the objective, so an Optuna sweep (sweeps/search.yaml) never restates a direction.
The entry point `ganlab.train` imports this module before Hydra composes the config.
"""

from __future__ import annotations

import atexit
import json
import logging
import signal
import sys
import tempfile
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ganlab import config as ganlab_config
from ganlab import scores, sweep_report, tracking

log = logging.getLogger(__name__)

SWEEP_FILE = "ganlab_sweep.json"
DIRECTION_RESOLVER = "ganlab.direction"  # ${ganlab.direction:${objective}} -> minimize / maximize

if not OmegaConf.has_resolver(DIRECTION_RESOLVER):
    OmegaConf.register_new_resolver(DIRECTION_RESOLVER, scores.optuna_direction)


def read_sweep_file(sweep_dir: Path) -> dict:
    """{"parent_run_id": ..., "swept_keys": [...]} of the sweep in `sweep_dir` ({} if none)."""
    file = Path(sweep_dir) / SWEEP_FILE
    return json.loads(file.read_text()) if file.exists() else {}


def swept_keys(config: DictConfig) -> list[str]:
    """Keys with several values: sweeps on the command line and the sweeper's `params`."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [*config.hydra.overrides.task, *(f"{key}={value}" for key, value in params.items())]
    keys = []
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override() and key not in keys:
            keys.append(key)
    return keys


class SweepTracking(Callback):
    def __init__(self):
        self.client = None
        self.run_id = None
        self.interrupted = False

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from ganlab import config as config_checks

        config_checks.validate_tracking(config)
        self.client, experiment_id = tracking.open_store(config.tracking.uri, config.tracking.experiment)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        keys = swept_keys(config)
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep {' x '.join(keys) or 'jobs'}",
            tags={**tracking.environment_tags(), "sweep.overrides": " ".join(config.hydra.overrides.task),
                  "sweep.dir": str(sweep_dir.resolve()), tracking.SWEEP_PARENT_TAG: "true",
                  "mlflow.source.name": "ganlab.train -m", "mlflow.source.type": "LOCAL"},
        )
        self.run_id = run.info.run_id
        self._close_on_exit()
        (sweep_dir / SWEEP_FILE).write_text(json.dumps({"parent_run_id": self.run_id, "swept_keys": keys}))
        log.info("MLflow sweep run %s; jobs appear as its children", self.run_id)

    def _close_on_exit(self) -> None:
        """However the process ends before on_multirun_end, the parent is not left RUNNING."""

        def note_interrupt(signum, frame):
            self.interrupted = True
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

        def close_if_open():
            if self.run_id is None:
                return
            status = "KILLED" if self.interrupted or _interrupted_by_exception() else "FAILED"
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as error:  # noqa: BLE001
                log.warning("could not close sweep run %s: %s", self.run_id, error)

        signal.signal(signal.SIGTERM, note_interrupt)
        atexit.register(close_if_open)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        run_id, client = self.run_id, self.client
        experiment_id = client.get_run(run_id).info.experiment_id
        _, children = tracking.sweep_children(client, experiment_id, run_id)
        failed = [child for child in children if child.info.status != "FINISHED"]
        runless = jobs_without_a_run(Path(config.hydra.sweep.dir), children)
        swept = [ganlab_config.param_key(key) for key in read_sweep_file(Path(config.hydra.sweep.dir)).get("swept_keys", [])]
        with tempfile.TemporaryDirectory() as scratch:
            summary = sweep_report.summarize(client, children, swept, config.get("objective"), Path(scratch),
                                             objective_at=config.get("objective_at"), runless_jobs=runless)
            for file in summary.files:
                client.log_artifact(run_id, str(file), "summary")
        optimizer_report = Path(config.hydra.sweep.dir) / "optimization_results.yaml"  # written by the Optuna sweeper
        if optimizer_report.exists():
            client.log_artifact(run_id, str(optimizer_report), "summary")
        sweep_report.log_on_parent(client, run_id, summary, config.get("objective"))
        jobs = len(children) + len(runless)
        lost = len(failed) + len(runless)
        status = "FAILED" if lost or not children else "FINISHED"
        client.set_tag(run_id, "sweep.jobs", f"{jobs - lost} of {jobs} finished")
        client.set_terminated(run_id, status)
        self.run_id = None  # closed: nothing left for the exit handler
        print(f"ganlab: sweep of {jobs} jobs ({lost} failed); summary (table, heatmap, samples) "
              f"under summary/ of MLflow run {run_id}", flush=True)
        print(tracking.ui_hint(config.tracking.uri, experiment_id, run_id), flush=True)
        if lost:
            # Hydra turns a callback's exception into a warning; the exit status must say it.
            reasons = "; ".join(sweep_report.not_finished(children, runless))
            print(f"{lost} of {jobs} sweep jobs did not finish: {reasons}", file=sys.stderr, flush=True)
            raise SystemExit(1)


def jobs_without_a_run(sweep_dir: Path, children) -> dict[str, str]:
    """{job number: its overrides} of the sweep's jobs that have a folder but no MLflow run: they
    failed before their run was created (their log holds the traceback)."""
    with_run = {child.data.tags.get("sweep.job_num") for child in children}
    found = {}
    for overrides in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job_num = overrides.parent.parent.name
        if job_num not in with_run:
            found[job_num] = " ".join(OmegaConf.load(overrides))
    return found


def _interrupted_by_exception() -> bool:
    last = getattr(sys, "last_type", None)
    return last is not None and issubclass(last, KeyboardInterrupt)

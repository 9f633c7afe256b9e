"""Sweep tracking: one MLflow parent run per Hydra multirun, closed with its summary.

`SweepTracking` is a Hydra callback (registered in conf/train.yaml). When a multirun
starts it creates the store, the experiment and the parent run (named by what is swept,
e.g. `sweep dropout x label_smoothing`), and leaves the parent's id and the swept keys
in the sweep folder, where every job (in this process or another) finds them. When the
multirun ends it hands the children to `ganlab.sweeps.summary`, logs the summary on the
parent (files, the best job's scores and swept values, a Markdown description) and
closes it; the summary's files are also left in the sweep folder's summary/. A sweep with a
failed job ends FAILED and exits non-zero; one stopped by Ctrl-C or SIGTERM ends KILLED
(its jobs on this machine are stopped and their runs KILLED too), and one that dies of an
error FAILED: never RUNNING.

`sweep.resume=<parent run id or sweep folder>`, given with the sweep's own overrides,
continues a sweep instead of starting one: the parent is RUNNING again, and every job
finds its earlier run by job number (`ganlab.training.resume.earlier_attempt`): FINISHED ones
are skipped, the others continue from their checkpoints, and jobs never started start.

Importing this module also registers the OmegaConf resolver `ganlab.direction`:
`${ganlab.direction:${objective}}` is `minimize` or `maximize` as the score registry says
for the objective, so an Optuna sweep (sweeps/search.yaml) never restates a direction.
The entry point `ganlab.train` imports this module before Hydra composes the config.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import signal
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ganlab.core import config as ganlab_config
from ganlab.core import interrupts, machine, scores
from ganlab.sweeps import search, settle_report, settle_store
from ganlab.sweeps.ranking import SUMMARY_DIR
from ganlab.sweeps import summary as sweep_report
from ganlab.tracking import run_lock
from ganlab.tracking import store as tracking
from ganlab.tracking.job_run import FAILURE_TAG
from ganlab.core.errors import InputError

log = logging.getLogger(__name__)

SWEEP_FILE = "ganlab_sweep.json"
LOST_JOBS_FILE = "ganlab_lost_jobs.json"  # {job number: why the launcher lost it}, written by a cluster launcher
SUMMARY = SUMMARY_DIR  # the sweep summary's folder (ganlab.sweeps.ranking)
RESUME_KEY = "sweep.resume"  # a sweep's parent run id (or folder) to continue
PARENT_OVERRIDES_TAG = "sweep.overrides"  # a parent's command-line overrides (without sweep.resume)
DIRECTION_RESOLVER = "ganlab.direction"  # ${ganlab.direction:${objective}} -> minimize / maximize

if not OmegaConf.has_resolver(DIRECTION_RESOLVER):
    OmegaConf.register_new_resolver(DIRECTION_RESOLVER, scores.optuna_direction)


def read_sweep_file(sweep_dir: Path) -> dict:
    """{"parent_run_id": ..., "swept_keys": [...]} of the sweep in `sweep_dir` ({} if none)."""
    file = Path(sweep_dir) / SWEEP_FILE
    return json.loads(file.read_text()) if file.exists() else {}


def swept_keys(config: DictConfig) -> list[str]:
    """Keys with several values: sweeps on the command line and the sweeper's `params` (where a plain value
    on the command line fixes a key), and `seed` for a sweeper that runs seeds itself: one whose config
    (conf/hydra/sweeper/: search's, settle's) has `seeds`, how many each setting gets (at least)."""
    swept = {}
    for override in given_overrides(config):
        swept[override.get_key_element().lstrip("+~")] = override.is_sweep_override()
    keys = [key for key, is_swept in swept.items() if is_swept]
    if sweeper_seeds(config) and sweep_report.SEED_KEY not in keys:
        keys.append(sweep_report.SEED_KEY)
    return keys


def given_overrides(config: DictConfig) -> list:
    """The parsed overrides every job is given: the named sweep's `params`, then the command line's (a later one wins)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [*(f"{key}={value}" for key, value in params.items()), *task_overrides(config)]
    return OverridesParser.create().parse_overrides(lines)


def sweeper_seeds(config: DictConfig) -> int | None:
    """How many seeds a sweeper that runs seeds itself gives each setting (`hydra.sweeper.seeds`), else None."""
    seeds = OmegaConf.select(config, "hydra.sweeper.seeds")
    return seeds if isinstance(seeds, int) and seeds > 1 else None


class SweepTracking(Callback):
    def __init__(self):
        self.client = None
        self.run_id = None
        self.interrupted = False
        self.jobs_run_here = True  # the jobs are processes of this machine (every launcher but SLURM)
        self.lock: run_lock.RunLock | None = None  # this process's hold on the parent run

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        """A SIGTERM between two jobs whose KeyboardInterrupt Python dropped (it lands in the last job's
        `__del__` methods as its nets are freed) still stops the sweep before the next job."""
        if self.interrupted:
            raise KeyboardInterrupt("signal SIGTERM")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from ganlab.sweeps import precheck

        try:  # every job's config, data and store (and a settle sweep's question), before anything exists
            ganlab_config.validate_tracking(config)
            precheck.check_sweep(config, task_overrides(config))
            self.client, experiment_id = tracking.open_store(config.tracking.uri, config.tracking.experiment)
        except InputError as error:
            # SystemExit, not an Exception: Hydra turns a callback's exception into a warning and runs the jobs
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        sweep_dir = Path(config.hydra.sweep.dir)
        keys = swept_keys(config)
        overrides = sweep_overrides(config)
        resumed = OmegaConf.select(config, RESUME_KEY)
        if resumed:
            refuse_unresumable_sweeper(config)
        if resumed:  # checked before the sweep's folder exists: a refused resume leaves nothing behind
            self.lock = reopen_parent(self.client, experiment_id, str(resumed), overrides)
            self.run_id = self.lock.run_id
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if resumed:
            self.client.set_tag(self.run_id, "sweep.dir", str(sweep_dir.resolve()))
            print(f"ganlab: continuing sweep run {self.run_id}: finished jobs are skipped, the others resume "
                  "from their checkpoints", flush=True)
        else:
            self.lock = run_lock.RunLock(self.client, "", "sweep")
            run = self.client.create_run(
                experiment_id,
                run_name=f"sweep {' x '.join(keys) or 'jobs'}",
                tags={**machine.environment_tags(), PARENT_OVERRIDES_TAG: overrides,
                      "sweep.dir": str(sweep_dir.resolve()), tracking.SWEEP_PARENT_TAG: "true",
                      "mlflow.source.name": "ganlab.train -m", "mlflow.source.type": "LOCAL", **self.lock.tag()},
            )
            self.run_id = self.lock.run_id = run.info.run_id
            self.lock.claim()
            self._log_parent_params(config)
        self.jobs_run_here = "slurm" not in str(OmegaConf.select(config, "hydra.launcher._target_") or "").lower()
        self._close_on_exit()
        (sweep_dir / SWEEP_FILE).write_text(json.dumps({"parent_run_id": self.run_id, "swept_keys": keys}))
        log.info("MLflow sweep run %s; jobs appear as its children", self.run_id)

    def _log_parent_params(self, config: DictConfig) -> None:
        """The parent's Parameters card: what was swept and what every job was given (`parent_params`)."""
        from mlflow.entities import Param

        try:
            self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in parent_params(config).items()])
        except Exception as error:  # noqa: BLE001 - the sweep's record of itself, never a reason to stop it
            log.warning("could not log the sweep's settings on run %s: %s: %s", self.run_id, type(error).__name__, error)

    def _close_on_exit(self) -> None:
        """However the process ends before on_multirun_end, the parent is not left RUNNING."""

        def note_interrupt(signum, frame):
            self.interrupted = True
            interrupts.stop(signal.Signals(signum).name)  # at once, or as the parent's store write returns

        def close_if_open():
            if self.run_id is None:
                return
            status = "KILLED" if self.interrupted or _interrupted_by_exception() else "FAILED"
            try:
                if self.jobs_run_here:
                    close_orphaned_jobs(self.client, self.run_id)
                self.client.set_terminated(self.run_id, status)
            except Exception as error:  # noqa: BLE001
                log.warning("could not close sweep run %s: %s", self.run_id, error)
            self._release()

        for number in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(number) is not signal.SIG_IGN:  # SIGINT under nohup or `&` stays ignored
                signal.signal(number, note_interrupt)
        atexit.register(close_if_open)

    def __getstate__(self) -> dict:
        """A launcher's workers get a copy of the callbacks (joblib pickles them): the parent's hold stays here."""
        return {**self.__dict__, "lock": None}

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        run_id, client = self.run_id, self.client
        experiment_id = client.get_run(run_id).info.experiment_id
        _, children = tracking.sweep_children(client, experiment_id, run_id)
        if name_what_the_launcher_saw(client, Path(config.hydra.sweep.dir), children):
            _, children = tracking.sweep_children(client, experiment_id, run_id)
        failed = [child for child in children if child.info.status != "FINISHED"]
        runless = jobs_without_a_run(Path(config.hydra.sweep.dir), children)
        swept = [ganlab_config.param_key(key) for key in read_sweep_file(Path(config.hydra.sweep.dir)).get("swept_keys", [])]
        folder = Path(config.hydra.sweep.dir) / SUMMARY  # a copy beside the jobs' folders
        folder.mkdir(parents=True, exist_ok=True)
        summary = sweep_report.summarize(client, children, swept, config.get("objective"), folder,
                                         objective_at=config.get("objective_at"), runless_jobs=runless)
        for file in summary.files:
            client.log_artifact(run_id, str(file), SUMMARY)
        optimizer_report = Path(config.hydra.sweep.dir) / "optimization_results.yaml"  # written by the Optuna sweeper
        if optimizer_report.exists():
            client.log_artifact(run_id, str(optimizer_report), SUMMARY)
        view_key = sweep_report.log_on_parent(client, run_id, summary, config.get("objective"))
        if (folder / settle_report.MARKDOWN).is_file():  # a settle sweep: its verdicts first on the parent
            settle_report.put_first(client, run_id, folder)
        reused = sum(settle_store.REUSED_TAG in child.data.tags for child in children)  # a settle sweep's copies
        jobs = len(children) + len(runless) - reused
        lost = len(failed) + len(runless)
        status = "FAILED" if lost or not children else "FINISHED"
        client.set_tag(run_id, "sweep.jobs", f"{jobs - lost} of {jobs} finished" + (f", {reused} seeds reused" if reused else ""))
        client.set_terminated(run_id, status)
        self._release()
        self.run_id = None  # closed: nothing left for the exit handler
        trained = f"{jobs} jobs trained, {reused} seeds reused" if reused else f"{jobs} jobs"
        print(f"ganlab: sweep of {trained} ({lost} failed); summary ({summary_contents(summary)}) in {folder} "
              f"and under {SUMMARY}/ of MLflow run {run_id}", flush=True)
        best = search.closing_line(client.get_run(run_id).data.tags, config.get("objective")) or best_line(summary)
        if best:  # the answer, then where to look at it: the console's last lines
            print(best, flush=True)
        print(tracking.ui_hint(config.tracking.uri, experiment_id, run_id, view_key=view_key), flush=True)
        if lost:
            # Hydra turns a callback's exception into a warning; the exit status must say it.
            reasons = "; ".join(sweep_report.not_finished(children, runless))
            print(f"{lost} of {jobs} sweep jobs did not finish: {reasons}", file=sys.stderr, flush=True)
            raise SystemExit(1)


def summary_contents(summary) -> str:
    """What the sweep's summary holds, as its files say (a heatmap only where one was drawn)."""
    names = [Path(file).name for file in summary.files]
    parts = ["table"]
    parts += ["curves"] if any(name.startswith("sweep_curves") for name in names) else []
    parts += ["heatmap"] if any(name.startswith("sweep_heatmap") for name in names) else []
    parts += ["samples"] if summary.montage is not None else []
    parts += ["seed comparison"] if "comparison.csv" in names else []
    return ", ".join(parts)


def best_line(summary) -> str | None:
    """`best setting: dropout=0.1 ls=0: fid 97.3 (95% interval 90.1 to 104.5 over 3 seeds; lower is better)`:
    the best job's setting and the mean of its returned score over the setting's seeds (Student-t interval,
    `ranking.best_setting`); one run gives its value and says it has no interval. None without a best job."""
    from ganlab.sweeps.ranking import best_setting

    found = best_setting(summary)
    if found is None:
        return None
    metric = found.metric
    # the score registry's precision, one number of decimals for the value and its interval (as the parent's table)
    value, low, high = scores.format_column(metric, [found.value, found.ci_low, found.ci_high])
    better = f"{scores.direction(metric)} is better" if scores.direction(metric) else ""
    if found.n > 1 and math.isnan(found.ci_low):  # seed_stats.summarize: a seed scored inf
        return (f"best setting: {found.label}: {metric} {value} (over {found.n} seeds; a seed scored inf, so no "
                f"interval; {better})")
    if found.n > 1:
        return (f"best setting: {found.label}: {metric} {value} (95% interval {low} to {high} over {found.n} seeds; "
                f"{better})")
    return f"best setting: {found.label}: {metric} {value} (one run, so no interval: sweep seed too; {better})"


def parent_params(config: DictConfig) -> dict[str, str]:
    """The parent's params: `sweep.swept.<key>` (the values as typed, e.g. `0.1,0.3` or `interval(0.0, 0.6)`; for
    `seed` run by the sweeper itself, how many) and `sweep.fixed.<key>` for every other value the command line or
    the named sweep's `params` gives all jobs; never `sweep.resume` (which sweep goes on, not what it trains)."""
    found: dict[str, str] = {}
    for override in given_overrides(config):
        key = override.get_key_element().lstrip("+~")
        if key == RESUME_KEY:
            continue
        for prefix in (tracking.SWEEP_SWEPT_PARAM, tracking.SWEEP_FIXED_PARAM):  # a later line for a key wins
            found.pop(prefix + key, None)
        prefix = tracking.SWEEP_SWEPT_PARAM if override.is_sweep_override() else tracking.SWEEP_FIXED_PARAM
        found[prefix + key] = (override.input_line or "").partition("=")[2] or override.get_value_element_as_str()
    seeds = sweeper_seeds(config)
    if seeds and tracking.SWEEP_SWEPT_PARAM + sweep_report.SEED_KEY not in found:
        found.pop(tracking.SWEEP_FIXED_PARAM + sweep_report.SEED_KEY, None)
        found[tracking.SWEEP_SWEPT_PARAM + sweep_report.SEED_KEY] = f"by the sweeper (hydra.sweeper.seeds={seeds})"
    return {key: value[:500] for key, value in found.items()}


def sweep_overrides(config: DictConfig) -> str:
    """The sweep's command-line overrides as typed, without `sweep.resume` (which sweep goes on is not what it trains)."""
    return " ".join(item for item in task_overrides(config) if item.split("=", 1)[0].lstrip("+~") != RESUME_KEY)


def task_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides as typed: never resolved (`epochs=${oc.env:NOPE}` is its job's to refuse)."""
    return [str(item) for item in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]


def refuse_unresumable_sweeper(config: DictConfig) -> None:
    """`sweep.resume` continues a grid by job number: Hydra's basic sweeper's or ganlab's own. Another
    sweeper (Optuna's: its trials depend on the study's history) is refused in one line, exit 1."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if target.endswith("BasicSweeper") or "ganlab" in target:
        return
    print(f"error: {RESUME_KEY}: continues sweeps of Hydra's basic sweeper (a grid) or ganlab's own, not of "
          f"{target.rsplit('.', 1)[-1]} (hydra.sweeper._target_={target}), whose next trials depend on a history "
          "it does not keep; start that sweep again without sweep.resume.", file=sys.stderr, flush=True)
    raise SystemExit(1)


def reopen_parent(client, experiment_id: str, target: str, overrides: str) -> run_lock.RunLock:
    """The parent run of the sweep `target` names (its run id or its folder), held by this process and RUNNING again.

    One live resume per sweep: the parent's owner tag is taken with a compare-and-set
    (`ganlab.tracking.run_lock`, holding across machines), so a second resume, or a resume
    while the sweep itself still runs, is refused in one line naming the process and host
    that holds it. A FINISHED sweep (checked under that lock) has nothing left to do: one
    line, exit 0, nothing created.

    The sweep must be continued with the overrides it started with: its jobs find their
    earlier runs by job number (`ganlab.training.resume.earlier_attempt`). Bad input ends the
    command here, before any job starts: one paragraph on stderr, exit 1.
    """
    try:
        parent_id = target
        if Path(target).is_dir():
            parent_id = read_sweep_file(Path(target)).get("parent_run_id")
            if parent_id is None:
                raise InputError(f"{RESUME_KEY}: {target!r} is not a sweep folder (it has no {SWEEP_FILE}); give "
                                 "the sweep's parent run id (printed when the sweep started) or its folder under "
                                 "outputs/multirun/.")
        parent = tracking.find_run(client, parent_id, option=RESUME_KEY)
        if parent.data.tags.get(tracking.SWEEP_PARENT_TAG) != "true" or parent.info.experiment_id != experiment_id:
            raise InputError(f"{RESUME_KEY}: run {parent_id} is not the parent run of a sweep in this experiment; give "
                             "the id of a sweep's parent run (the `sweep ...` run whose children are the jobs).")
        started_with = parent.data.tags.get(PARENT_OVERRIDES_TAG, "")
        if started_with != overrides:
            raise InputError(f"{RESUME_KEY}: sweep {parent_id} started with the overrides {started_with!r}, not "
                             f"{overrides!r}; continue it with the same ones: python -m ganlab.train -m "
                             f"{started_with} {RESUME_KEY}={parent_id}")
        lock = run_lock.RunLock(client, parent_id, f"{RESUME_KEY}: sweep")
        parent = lock.take()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None  # not an Exception: Hydra would turn that into a warning and run the jobs
    if parent.info.status == "FINISHED":
        lock.release()
        print(f"ganlab: sweep {parent_id} has finished ({parent.data.tags.get('sweep.jobs', 'all its jobs finished')}); "
              "nothing to continue.", flush=True)
        raise SystemExit(0)
    client.update_run(parent_id, status="RUNNING")
    return lock


def close_orphaned_jobs(client, parent_id: str) -> None:
    """A sweep that stops early: its job processes on this machine are stopped (SIGTERM, so each
    closes its run; SIGKILL after a minute), then any child run still RUNNING that no live process
    holds (`ganlab.tracking.run_lock`: joblib kills its workers outright) is marked KILLED. Their checkpoints stay: `sweep.resume` continues them."""
    import psutil

    # multiprocessing's and joblib's resource trackers ignore SIGTERM and end with this process: not waited for
    jobs = [child for child in psutil.Process().children(recursive=True) if not _is_resource_tracker(child)]
    for job in jobs:
        with contextlib.suppress(psutil.Error):
            job.terminate()
    _, alive = psutil.wait_procs(jobs, timeout=60)
    for job in alive:
        with contextlib.suppress(psutil.Error):
            job.kill()
    experiment_id = client.get_run(parent_id).info.experiment_id
    _, children = tracking.sweep_children(client, experiment_id, parent_id)
    from ganlab.tracking.job_run import close_left_running

    for child in children:  # a run another live process trains (another machine's, a resume's) stays as it is
        close_left_running(client, child, "KILLED", f"KILLED: its sweep stopped before it ended; "
                           f"sweep.resume={parent_id} continues it")


def _is_resource_tracker(process) -> bool:
    import psutil

    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def lost_jobs(sweep_dir: Path) -> dict[str, str]:
    """{job number: why the launcher lost it}, from the sweep folder's LOST_JOBS_FILE; {} without one."""
    lost_file = Path(sweep_dir) / LOST_JOBS_FILE
    return json.loads(lost_file.read_text()) if lost_file.is_file() else {}


def name_what_the_launcher_saw(client, sweep_dir: Path, children) -> bool:
    """A job the launcher lost (LOST_JOBS_FILE: SLURM cancelled it, say) whose run the job closed itself, as
    the signal reached it, says both on its run: the job's own reason, then the launcher's (which job
    closed first is a matter of timing, so the record never depends on it). True if a tag changed."""
    lost = lost_jobs(sweep_dir)
    changed = False
    for child in children:
        why = lost.get(child.data.tags.get(tracking.JOB_NUM_TAG))
        own = child.data.tags.get(FAILURE_TAG, "")
        if why and child.info.status != "FINISHED" and why not in own:
            client.set_tag(child.info.run_id, FAILURE_TAG, f"{own} ({why})" if own else why)
            changed = True
    return changed


def jobs_without_a_run(sweep_dir: Path, children) -> dict[str, tuple[str, str]]:
    """{job number: (its overrides, why)} of the sweep's jobs that have a folder but no MLflow run:
    lost by the launcher before they ran (the reason it gave, in LOST_JOBS_FILE), or failed
    before their run was created (their log holds the traceback)."""
    with_run = {child.data.tags.get(tracking.JOB_NUM_TAG) for child in children}
    lost = lost_jobs(sweep_dir)
    found = {}
    for overrides in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job_num = overrides.parent.parent.name
        if job_num not in with_run:
            why = lost.get(job_num, "failed before its MLflow run existed (its traceback is in the job's log)")
            found[job_num] = (" ".join(OmegaConf.load(overrides)), why)
    return found


def _interrupted_by_exception() -> bool:
    last = getattr(sys, "last_type", None)
    return last is not None and issubclass(last, KeyboardInterrupt)

"""Hydra entry point: compose the config, then run one training job (`ganlab.training.job`).

    python -m ganlab.train epochs=1 data.path=../shared/data/mnist.npz
    python -m ganlab.train -m dropout=0.1,0.3          # a sweep: one MLflow run per job
    python -m ganlab.train --help                      # the knobs, groups and outputs

`main` works out the facts only Hydra knows (the output folder, the overrides, the
sweep's parent run and swept keys, the launcher's share of the cores) and hands them to
`ganlab.training.job.run_job`, which returns the objective for a sweeper. Bad input is printed
once, as one paragraph, with a non-zero exit; in a sweep the failed job returns NaN and
the sweep goes on (its summary names the failure). An unexpected error is never silent:
its traceback goes to the job's log and to stderr (and its run, if it exists, ends FAILED).
`+new.key=...` is refused here; the job reads its config once
(`ganlab.core.config.typed_config`: every interpolation resolved, every key checked) into a typed `JobConfig`. Ctrl-C
and SIGTERM, at any stage from the first import on, print one line (exit 130 or 143).
"""

from __future__ import annotations

import signal
import sys


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interrupted(error: KeyboardInterrupt, where: str = " while starting; nothing was recorded") -> None:
    """One line for Ctrl-C or SIGTERM, never a traceback; exit 130 (SIGINT) or 143 (SIGTERM)."""
    name = "SIGTERM" if "SIGTERM" in str(error) else "SIGINT (Ctrl-C)"
    # As the interpreter records an uncaught exception: a sweep's exit handler reads it to mark its run KILLED.
    sys.last_type, sys.last_value = type(error), error
    print(f"ganlab: interrupted by {name}{where}.", file=sys.stderr, flush=True)
    sys.exit(143 if name == "SIGTERM" else 130)


# From the first line on, SIGTERM stops the process like Ctrl-C does, imports included: one line, no
# traceback. Only as the program itself: a launcher's worker that imports this module keeps its own handlers.
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
try:
    import logging
    import math
    import shlex
    import shutil
    from pathlib import Path

    from ganlab.core import runtime

    runtime.quiet_console()  # before anything imports TensorFlow
    import warnings

    # A warning no user can act on: joblib's note as its worker pool winds down after a parallel sweep.
    warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")

    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf

    from ganlab.core import config
    from ganlab.sweeps import sweep
    from ganlab.tracking import store as tracking
    from ganlab.training.checkpoint import AlreadyFinished
    from ganlab.core.errors import InputError, RunNotMarked, TrainingDiverged
    from ganlab.training.job import JobContext, run_job
except KeyboardInterrupt as stopped:
    if __name__ != "__main__":
        raise
    _interrupted(stopped)

log = logging.getLogger("ganlab.train")


HYDRA_FILES = {".hydra", "train.log"}  # what Hydra puts into a job's folder before the job runs


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    context = None
    try:
        overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)  # as typed, never resolved
        config.refuse_new_keys(overrides)
        context = job_context(overrides)
        return run_job(cfg, context)  # the config's one pass; it says where the job's outputs go once it is accepted
    except AlreadyFinished as done:
        print(f"ganlab: {done}", flush=True)
        discard_unused_folder(output_dir, in_sweep)
        return None
    except KeyboardInterrupt as stopped:
        if in_sweep:  # the sweep marks its runs KILLED, then says so once
            raise
        _interrupted(stopped, stopped_job_line(stopped, output_dir))
    except (InputError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        discard_unused_folder(output_dir, in_sweep)
        if in_sweep:
            return math.nan  # recorded FAILED on its run; the sweep goes on and reports it at the end
        sys.exit(1)
    except Exception as error:
        if in_sweep:  # the sweep goes on; this job counts among those that did not finish
            log.exception("job %s failed with an unexpected error", output_dir)  # the traceback, into its log
            log_file = context.log_file if context else output_dir
            print(f"error: sweep job in {output_dir} failed: {type(error).__name__}: {error} "
                  f"(traceback in {log_file})", file=sys.stderr, flush=True)
            return math.nan
        raise


def stopped_job_line(stopped: KeyboardInterrupt, output_dir: Path) -> str:
    """What follows "interrupted by SIGTERM" for a single job: its run's end, as it was recorded."""
    if isinstance(stopped, RunNotMarked):  # the store failed as the run was closed: it may still show RUNNING
        return f": {stopped.why.rstrip('.')}"
    if (output_dir / "checkpoint" / "checkpoint.npz").is_file():
        return f": its run is marked KILLED; resume={shlex.quote(str(output_dir))} continues it"
    return " before training: its run, if one was made, is marked KILLED"


def discard_unused_folder(output_dir: Path, in_sweep: bool) -> None:
    """A job refused before it made its run (a refused or finished resume, a bad store) leaves
    no folder behind: only Hydra's own files are there, and they are removed."""
    if in_sweep or not output_dir.is_dir() or {path.name for path in output_dir.iterdir()} - HYDRA_FILES:
        return
    shutil.rmtree(output_dir, ignore_errors=True)


def job_context(overrides: list[str]) -> JobContext:
    """What only Hydra knows of this job; the config itself is read once, by the job (`ganlab.core.config.typed_config`)."""
    hydra_cfg = HydraConfig.get()
    # `sweep.resume` says which sweep goes on, not what a job trains: a continued job's overrides are its first ones.
    continues_sweep = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") == sweep.RESUME_KEY]
    overrides = [item for item in overrides if item not in continues_sweep]
    if hydra_cfg.mode != RunMode.MULTIRUN and any(item.split("=", 1)[1] not in ("", "null") for item in continues_sweep if "=" in item):
        raise InputError(f"{sweep.RESUME_KEY}: continues a sweep, so it goes with -m and the sweep's overrides "
                         f"(python -m ganlab.train -m <its overrides> {sweep.RESUME_KEY}=<parent run id>); a single "
                         "job is continued with resume=<its run id or output folder>.")
    output_dir = Path(hydra_cfg.runtime.output_dir)
    launcher = hydra_cfg.launcher
    parallel_jobs = launcher.get("n_jobs")
    context = JobContext(
        output_dir=output_dir,
        overrides=overrides,
        run_name=tracking.run_name(overrides),
        threads=runtime.threads_for_job(None, launcher.get("cpus_per_task"), parallel_jobs),  # when `threads` is null
        # Bars only where one job draws on a terminal: parallel jobs would interleave them, and in a
        # log file (a SLURM job's, a redirected console) they are noise.
        progress_bars=not (parallel_jobs and parallel_jobs != 1) and sys.stderr.isatty(),
        tags={tracking.OVERRIDES_TAG: " ".join(overrides), "mlflow.source.name": "ganlab.train", "mlflow.source.type": "LOCAL"},
        log_file=output_dir / f"{hydra_cfg.job.name}.log",
    )
    if hydra_cfg.mode == RunMode.MULTIRUN:
        context.in_sweep = True
        found = sweep.read_sweep_file(Path(hydra_cfg.sweep.dir))
        context.parent_run_id = found.get("parent_run_id")
        context.run_name = tracking.run_name(overrides, keys=found.get("swept_keys"))
        context.tags.update({tracking.SWEEP_ID_TAG: context.parent_run_id or hydra_cfg.sweep.dir, tracking.JOB_NUM_TAG: hydra_cfg.job.num})
    return context


if __name__ == "__main__":
    from ganlab.core.knob_names import misspelt  # a misspelt knob, named before Hydra's "+key" advice

    if misspelt_lines := misspelt(sys.argv[1:]):
        print("\n".join(misspelt_lines), file=sys.stderr, flush=True)
        sys.exit(1)
    if unresolvable := config.unresolvable_hydra_value(sys.argv[1:]):  # Hydra resolves hydra.* before any job
        print(f"error: {unresolvable}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        main()
    except KeyboardInterrupt as stopped:  # outside a job: while Hydra composes, or between a sweep's jobs
        _interrupted(stopped, ": its runs are marked KILLED")

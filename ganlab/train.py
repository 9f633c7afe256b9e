"""Hydra entry point: compose the config, then run one training job (`ganlab.job`).

    python -m ganlab.train epochs=1 data.path=../shared/data/mnist.npz
    python -m ganlab.train -m dropout=0.1,0.3          # a sweep: one MLflow run per job
    python -m ganlab.train --help                      # the knobs, groups and outputs

`main` works out the facts only Hydra knows (the output folder, the overrides, the
sweep's parent run and swept keys, the launcher's share of the cores) and hands them to
`ganlab.job.run_job`, which returns the objective for a sweeper. Bad input is printed
once, as one paragraph, with a non-zero exit; in a sweep the failed job returns NaN and
the sweep goes on (its summary names the failure). An unexpected error is never silent:
its traceback goes to the job's log and to stderr (and its run, if it exists, ends FAILED).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from ganlab import runtime

runtime.quiet_console()  # before anything imports TensorFlow

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ganlab import sweep, tracking  # noqa: E402
from ganlab.checkpoint import AlreadyFinished  # noqa: E402
from ganlab.errors import InputError, TrainingDiverged  # noqa: E402
from ganlab.job import JobContext, run_job  # noqa: E402

log = logging.getLogger("ganlab.train")


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    context = job_context(cfg)
    print(f"ganlab: job outputs in {context.output_dir}", flush=True)
    try:
        return run_job(cfg, context)
    except AlreadyFinished as done:
        print(f"ganlab: {done}", flush=True)
        return None
    except (InputError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        if context.in_sweep:
            return math.nan  # recorded FAILED on its run; the sweep goes on and reports it at the end
        sys.exit(1)
    except Exception as error:
        if context.in_sweep:  # the sweep goes on; this job counts among those that did not finish
            log.exception("job %s failed with an unexpected error", context.output_dir)  # the traceback, into its log
            print(f"error: sweep job in {context.output_dir} failed: {type(error).__name__}: {error} "
                  f"(traceback in {context.log_file})", file=sys.stderr, flush=True)
            return math.nan
        raise


def job_context(cfg: DictConfig) -> JobContext:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    launcher = hydra_cfg.launcher
    parallel_jobs = launcher.get("n_jobs")
    context = JobContext(
        output_dir=output_dir,
        overrides=overrides,
        run_name=tracking.run_name(overrides),
        threads=runtime.threads_for_job(cfg.get("threads"), launcher.get("cpus_per_task"), parallel_jobs),
        parallel=bool(parallel_jobs) and parallel_jobs != 1,
        tags={"hydra.overrides": " ".join(overrides), "mlflow.source.name": "ganlab.train", "mlflow.source.type": "LOCAL"},
        log_file=output_dir / f"{hydra_cfg.job.name}.log",
    )
    if hydra_cfg.mode == RunMode.MULTIRUN:
        context.in_sweep = True
        found = sweep.read_sweep_file(Path(hydra_cfg.sweep.dir))
        context.parent_run_id = found.get("parent_run_id")
        context.run_name = tracking.run_name(overrides, keys=found.get("swept_keys"))
        context.tags.update({"sweep.id": context.parent_run_id or hydra_cfg.sweep.dir, "sweep.job_num": hydra_cfg.job.num})
    return context


if __name__ == "__main__":
    main()

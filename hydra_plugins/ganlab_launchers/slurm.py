"""The launcher of `hydra/launcher=slurm`: hydra-submitit-launcher's, made safe for long sweeps.

Hydra instantiates launchers only from the `hydra_plugins` namespace, so this is where
`conf/hydra/launcher/slurm.yaml` names it; what SLURM is asked and what becomes of a lost
job is `ganlab.sweeps.slurm`'s. `SlurmLauncher` submits a sweep's jobs as one SLURM job array
exactly as hydra-submitit-launcher does, then waits for them itself, asking SLURM (squeue;
sacct where accounting is on) rather than submitit, whose wait never ends for a job that
died without a result on a cluster without accounting. While it waits:

- a job that ends without a result (cancelled, failed, timed out for good, killed for memory,
  gone from SLURM) is lost, not fatal: one line names it and its SLURM state, its run is not
  left RUNNING, and the sweep goes on; the sweep's callback (`ganlab.sweeps.sweep`) then writes the
  summary of the others and exits non-zero;
- an array that can never start (pending for `PartitionConfig`, or asking more CPUs or memory
  than any usable node of the partition has) is cancelled with one paragraph saying what was
  asked (`hydra.launcher.cpus_per_task`, `hydra.launcher.mem_gb`) and what the nodes have;
- Ctrl-C or SIGTERM of the sweep cancels its jobs, says so in one line, waits (up to a minute)
  for them to close their runs KILLED, and ends the sweep as interrupted.

A preempted or timed-out job (submitit's USR2, `signal_delay_s` before the end) is requeued by
submitit with the same Hydra job (BaseSubmititLauncher.checkpoint); the requeued job continues
its own MLflow run from its last checkpoint (`ganlab.training.job`). Without hydra-submitit-launcher
(the `scale` extra) this module defines nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from ganlab.sweeps import slurm

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
except ImportError:  # hydra-submitit-launcher is not installed
    submitit_launcher = None

log = logging.getLogger(__name__)

LOST_AFTER_S = 15  # a job SLURM says has ended may take this long to show its result file (a shared disk)
POLL_S = 1  # how often the result files are looked for
SLURM_POLL_S = (2, 30)  # squeue is asked every 2 s at first, then less often, at most every 30 s
CLOSE_WAIT_S = 60  # after Ctrl-C: how long to wait for the cancelled jobs to close their runs


class _QuietSacct(logging.Filter):
    """Drops submitit's "Bypassing sacct error" warning (a cluster without accounting says it every poll)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


if submitit_launcher is not None:

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        """hydra-submitit-launcher's SlurmLauncher with a wait that ends for lost, stuck and interrupted jobs."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            submitit_log = logging.getLogger("submitit")
            if not any(isinstance(known, _QuietSacct) for known in submitit_log.filters):
                submitit_log.addFilter(_QuietSacct())
            jobs = self._submit(job_overrides, initial_job_idx)
            return self._wait(jobs, job_overrides, initial_job_idx)

        def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
            """The job array, submitted as BaseSubmititLauncher.launch (hydra-submitit-launcher 1.2) does."""
            import submitit

            assert self.config is not None
            init_keys = {"submitit_folder", "max_num_timeout"}
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                             **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]}
                                             if "max_num_timeout" in self.params else {})
            base_params = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{key if key in base_params else f"{self._EXECUTOR}_{key}": value
                                          for key, value in self.params.items() if key not in init_keys})
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            job_params = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's refusal; it is said below
                    return executor.map_array(self, *zip(*job_params))
            except Exception as error:  # noqa: BLE001 - sbatch refused the array: say why, in one paragraph
                refusal = "; ".join(line.removeprefix("sbatch: error: ") for line in str(error).splitlines()
                                    if "error" in line.lower()) or str(error)
                self._stop(f"SLURM refused the sweep's jobs ({refusal.strip()}). {slurm.asked_and_available(self.params)}")

        def _wait(self, jobs: list, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
            """Every job's JobReturn: its own result, or NaN for a job lost on the way (named in one line)."""
            results: dict[int, JobReturn] = {}
            ended_at: dict[int, float] = {}  # when SLURM first said the job ended (or forgot it) without a result
            started = time.time()
            next_ask = 0.0
            try:
                while True:
                    for index, job in enumerate(jobs):
                        if index not in results and job.paths.result_pickle.exists():
                            results[index] = self._read_result(job, job_overrides[index], initial_job_idx + index)
                    if len(results) == len(jobs):
                        break
                    if time.time() < next_ask:
                        time.sleep(POLL_S)
                        continue
                    waiting = [index for index in range(len(jobs)) if index not in results]
                    states = slurm.job_states([jobs[index].job_id for index in waiting])
                    next_ask = time.time() + min(SLURM_POLL_S[1], SLURM_POLL_S[0] + (time.time() - started) / 10)
                    if states is None:  # SLURM did not answer: ask again later
                        continue
                    pending = {states[jobs[index].job_id][1] for index in waiting
                               if states.get(jobs[index].job_id, ("",))[0] == "PENDING"}
                    if pending and slurm.cannot_start(pending, self.params):
                        slurm.cancel([jobs[index].job_id for index in waiting])
                        self._stop(f"the sweep's SLURM jobs cannot start: they are pending ({', '.join(sorted(pending))}). "
                                   f"{slurm.asked_and_available(self.params)} The jobs were cancelled.")
                    for index in waiting:
                        state, _ = states.get(jobs[index].job_id) or (None, None)
                        if state in slurm.ACTIVE_STATES:
                            ended_at.pop(index, None)
                            continue
                        ended_at.setdefault(index, time.time())
                        if time.time() - ended_at[index] < LOST_AFTER_S:  # look again once its result had time to come
                            next_ask = min(next_ask, ended_at[index] + LOST_AFTER_S)
                        elif not jobs[index].paths.result_pickle.exists():
                            results[index] = self._lost(jobs[index], job_overrides[index], initial_job_idx + index,
                                                        f"ended {state or slurm.accounting_state(jobs[index].job_id)}")
            except KeyboardInterrupt:
                self._cancel_on_interrupt([job for index, job in enumerate(jobs) if index not in results])
                raise
            return [results[index] for index in range(len(jobs))]

        def _read_result(self, job, overrides: Sequence[str], job_num: int) -> JobReturn:
            """The job's JobReturn from submitit's result file; a job that ended in an error is lost."""
            from submitit.core.utils import pickle_load

            try:
                outcome, value = pickle_load(job.paths.result_pickle)
            except Exception as error:  # noqa: BLE001 - a torn file: the job is lost, not the sweep
                return self._lost(job, overrides, job_num, f"left an unreadable result ({type(error).__name__})")
            if outcome == "success":
                return value
            last_line = next((line for line in reversed(str(value).splitlines()) if line.strip()), "an error")
            return self._lost(job, overrides, job_num, f"ended with an error: {last_line.strip()}")

        def _lost(self, job, overrides: Sequence[str], job_num: int, why: str) -> JobReturn:
            """One line naming the lost job and why (its SLURM state or its error), its record for the
            sweep's summary, and NaN for the sweeper (as a sweep job that failed returns, ganlab.train)."""
            from ganlab.sweeps import sweep
            from ganlab.tracking import store as tracking

            assert self.config is not None
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            what = f"SLURM job {job.job_id} {why}"
            name = tracking.run_name(overrides, keys=sweep.read_sweep_file(sweep_dir).get("swept_keys"))
            print(f"ganlab: sweep job {job_num} ({name}) did not finish: {what}", file=sys.stderr, flush=True)
            slurm.record_lost(sweep_dir, sweep_dir / self._job_subdir(overrides, job_num), job_num, list(overrides),
                              what, self.config.tracking.uri, self.config.tracking.experiment)
            result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, task_name="ganlab")
            result.return_value = math.nan
            return result

        def _job_subdir(self, overrides: Sequence[str], job_num: int) -> str:
            """The job's folder under the sweep folder, as Hydra names it (`hydra.sweep.subdir`)."""
            assert self.hydra_context is not None and self.config is not None
            try:
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with OmegaConf.read_write(sweep_config):
                    sweep_config.hydra.job.num = job_num
                return str(sweep_config.hydra.sweep.subdir)
            except Exception:  # noqa: BLE001 - an interpolation only a running job resolves: Hydra's default
                return str(job_num)

        @staticmethod
        def _stop(message: str) -> None:
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(1)  # not an Exception: Hydra would print a traceback

        @staticmethod
        def _cancel_on_interrupt(jobs: list) -> None:
            """Ctrl-C or SIGTERM of the sweep: cancel its unfinished jobs and let them close their runs."""
            ids = [job.job_id for job in jobs]
            if not ids:
                return
            slurm.cancel(ids)
            print(f"ganlab: sweep interrupted: cancelled its {len(ids)} unfinished SLURM job(s) {', '.join(ids)}",
                  file=sys.stderr, flush=True)
            deadline = time.time() + CLOSE_WAIT_S
            try:  # their runs are closed KILLED by the jobs themselves, on SLURM's SIGTERM
                while time.time() < deadline:
                    states = slurm.job_states(ids)
                    if states is not None and not any(state in slurm.ACTIVE_STATES for state, _ in states.values()):
                        break
                    time.sleep(POLL_S)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                pass

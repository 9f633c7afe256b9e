"""The launcher of `hydra/launcher=slurm`: hydra-submitit-launcher's, made safe for long sweeps.

Hydra instantiates launchers only from the `hydra_plugins` namespace, so this is where
`conf/hydra/launcher/slurm.yaml` names it (through the `ganlab_slurm_schema` config registered
here, submitit's keys plus `lost_after_s`); what SLURM is asked is `ganlab.sweeps.slurm`'s and how
its answers are read `ganlab.sweeps.slurm_wait`'s. `SlurmLauncher` submits a sweep's jobs as one
SLURM job array exactly as hydra-submitit-launcher does, then waits for them itself, asking SLURM
(squeue; sacct where accounting is on) rather than submitit, whose wait never ends for a job that
died without a result on a cluster without accounting. While it waits:

- a job that ends without a result (cancelled, failed, timed out for good, killed for memory,
  gone from SLURM) is lost once squeue and sacct have agreed on it for `lost_after_s` (120 s):
  one line names it and its SLURM state, its run is not left RUNNING, and the sweep goes on;
  the sweep's callback (`ganlab.sweeps.sweep`) then writes the summary of the others and exits
  non-zero. A job SLURM requeues (NODE_FAIL, preemption) is active again within that time;
- a controller that does not answer (slurmctld restarting or unreachable) and nodes that take no
  job for now (drained, down, unknown, not responding) are waited for, with one line saying
  what for; nothing is cancelled;
- only a request no node of the partition can ever satisfy (more CPUs or memory than any node
  is configured with) is refused: its pending jobs are cancelled with one paragraph saying what
  was asked (`hydra.launcher.cpus_per_task`, `hydra.launcher.mem_gb`) and what the nodes have.
  A running task is never cancelled for it;
- Ctrl-C or SIGTERM of the sweep cancels its jobs, says so in one line, waits (KillWait and
  half a minute more) for them to end, closes KILLED the runs of those SLURM killed before they
  could close them, and ends the sweep as interrupted.

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
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext
from omegaconf import OmegaConf

from ganlab.sweeps import slurm, slurm_wait

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
except ImportError:  # hydra-submitit-launcher is not installed
    submitit_launcher = None

log = logging.getLogger(__name__)

POLL_S = 1  # how often the result files are looked for
SLURM_POLL_S = (2, 30)  # squeue is asked every 2 s at first, then less often, at most every 30 s
CLOSE_MARGIN_S = 30  # after Ctrl-C: how much longer than SLURM's KillWait the jobs get to end
OWN_KEYS = {"lost_after_s"}  # launcher keys of ganlab's, not submitit's


class _QuietSacct(logging.Filter):
    """Drops submitit's "Bypassing sacct error" warning (a cluster without accounting says it every poll)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if submitit_launcher is not None:

    # submitit's SLURM keys, ganlab's launcher, and how long an ended job's result is waited for. Made
    # with make_dataclass: Hydra runs this module without registering it in sys.modules, where
    # @dataclass would look for it to read postponed annotations.
    GanlabSlurmConf = make_dataclass("GanlabSlurmConf", [
        ("_target_", str, field(default="hydra_plugins.ganlab_launchers.slurm.SlurmLauncher")),
        ("lost_after_s", float, field(default=float(slurm_wait.DEFAULT_LOST_AFTER_S))),
    ], bases=(SlurmQueueConf,))
    GanlabSlurmConf.__module__ = __name__  # so the jobs' pickle finds it by name (Python 3.11 sets "types")
    ConfigStore.instance().store(group="hydra/launcher", name="ganlab_slurm_schema", node=GanlabSlurmConf,
                                 provider="ganlab")

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        """hydra-submitit-launcher's SlurmLauncher with a wait that ends for lost, stuck and interrupted jobs."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            submitit_log = logging.getLogger("submitit")
            if not any(isinstance(known, _QuietSacct) for known in submitit_log.filters):
                submitit_log.addFilter(_QuietSacct())
            try:
                lost_after_s = slurm_wait.check_lost_after(self.params.get("lost_after_s",
                                                                           slurm_wait.DEFAULT_LOST_AFTER_S))
            except ValueError as error:
                self._stop(str(error))
            jobs = self._submit(job_overrides, initial_job_idx)
            return self._wait(jobs, job_overrides, initial_job_idx, lost_after_s)

        def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
            """The job array, submitted as BaseSubmititLauncher.launch (hydra-submitit-launcher 1.2) does."""
            import submitit

            assert self.config is not None
            init_keys = {"submitit_folder", "max_num_timeout", *OWN_KEYS}
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
                nodes = slurm.partition_nodes(self.params.get("partition"))
                self._stop(f"SLURM refused the sweep's jobs ({refusal.strip()}). "
                           f"{slurm_wait.describe_request(self.params, nodes)}")

        def __getstate__(self) -> dict:
            """What each job receives (pickled by submitit): the launcher, with the sweep's callbacks to
            be made afresh from the config in the job, not this process's live ones (a store client,
            the parent run's lock), which neither pickle nor mean anything on another node."""
            state = self.__dict__.copy()
            if self.hydra_context is not None:
                state["hydra_context"] = HydraContext(config_loader=self.hydra_context.config_loader, callbacks=None)
            return state

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state)
            if self.hydra_context is not None and self.hydra_context.callbacks is None:
                from hydra._internal.callbacks import Callbacks

                self.hydra_context.callbacks = Callbacks(self.config)

        def _wait(self, jobs: list, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                  lost_after_s: float = slurm_wait.DEFAULT_LOST_AFTER_S) -> list[JobReturn]:
            """Every job's JobReturn: its own result, or NaN for a job lost on the way (named in one line)."""
            results: dict[int, JobReturn] = {}
            watch = slurm_wait.LostWatch(lost_after_s)
            notices = slurm_wait.Notices(_say)
            started_jobs: set[int] = set()  # jobs SLURM has let out of PENDING at least once
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
                    waiting = {index: jobs[index].job_id for index in range(len(jobs)) if index not in results}
                    states, trouble = slurm.query_jobs(list(waiting.values()))
                    next_ask = time.time() + min(SLURM_POLL_S[1], SLURM_POLL_S[0] + (time.time() - started) / 10)
                    if states is None:  # the controller does not answer: wait for it, change nothing
                        notices.track("controller", f"ganlab: waiting for SLURM's controller, which does not answer "
                                                    f"({trouble}); the sweep's jobs are left as they are and SLURM "
                                                    "is asked again until it answers")
                        continue
                    notices.track("controller", None)
                    started_jobs |= {index for index, job_id in waiting.items()
                                     if states.get(job_id, ("PENDING",))[0] != "PENDING"}
                    self._look_at_pending(waiting, states, started_jobs, notices, results, job_overrides,
                                          initial_job_idx)
                    ended = [job_id for index, job_id in waiting.items()
                             if index not in results and not slurm_wait.is_active(states.get(job_id, (None,))[0])]
                    accounting = slurm.accounting_states(ended) if ended else {}
                    for index, job_id in waiting.items():
                        state = states.get(job_id, (None,))[0]
                        said = (accounting or {}).get(job_id) if job_id in ended else None
                        if index in results or not watch.observe(job_id, state, said, time.time()):
                            continue
                        if not jobs[index].paths.result_pickle.exists():
                            how = state or said or slurm.accounting_state(job_id)
                            results[index] = self._lost(job_id, job_overrides[index], initial_job_idx + index,
                                                        f"ended {how}")
                    next_ask = min(next_ask, watch.next_verdict(
                        [job_id for index, job_id in waiting.items() if index not in results]))
            except KeyboardInterrupt:
                self._cancel_on_interrupt({initial_job_idx + index: job for index, job in enumerate(jobs)
                                           if index not in results})
                raise
            return [results[index] for index in range(len(jobs))]

        def _look_at_pending(self, waiting: dict[int, str], states: dict, started_jobs: set[int],
                             notices: slurm_wait.Notices, results: dict, job_overrides, initial_job_idx: int) -> None:
            """Pending jobs: refused only if no node of the partition, as configured, can ever run
            them (never a task that runs); waited for, with one line, while the nodes that could
            run them take no job (drained, down, unknown)."""
            pending = {index: states[job_id][1] for index, job_id in waiting.items()
                       if states.get(job_id, ("",))[0] == "PENDING"}
            if not pending or not set(pending.values()) - {"None"}:  # none, or SLURM has not looked at them yet
                notices.track("nodes", None)
                return
            nodes = slurm.partition_nodes(self.params.get("partition"))
            if nodes is None:  # sinfo did not answer: no verdict
                return
            if slurm_wait.never_fits(nodes, self.params):
                reasons = ", ".join(sorted(set(pending.values())))
                why = (f"the sweep's SLURM jobs cannot start: they are pending ({reasons}). "
                       f"{slurm_wait.describe_request(self.params, nodes)}")
                slurm.cancel([waiting[index] for index in pending])
                if not started_jobs and not results:  # none of the array ever ran: the request is what is wrong
                    self._stop(f"{why} The jobs were cancelled.")
                for index in pending:  # the others ran: only these are cancelled, and reported lost
                    results[index] = self._lost(waiting[index], job_overrides[index], initial_job_idx + index,
                                                f"was cancelled: it can never start ({why})")
                return
            wait = slurm_wait.node_wait(nodes, self.params)
            notices.track("nodes", None if wait is None else (
                f"ganlab: waiting: {wait}; the sweep's pending SLURM jobs start when a node takes jobs again"))

        def _read_result(self, job, overrides: Sequence[str], job_num: int) -> JobReturn:
            """The job's JobReturn from submitit's result file; a job that ended in an error is lost."""
            from submitit.core.utils import pickle_load

            try:
                outcome, value = pickle_load(job.paths.result_pickle)
            except Exception as error:  # noqa: BLE001 - a torn file: the job is lost, not the sweep
                return self._lost(job.job_id, overrides, job_num, f"left an unreadable result ({type(error).__name__})")
            if outcome == "success":
                return value
            last_line = next((line for line in reversed(str(value).splitlines()) if line.strip()), "an error")
            return self._lost(job.job_id, overrides, job_num, f"ended with an error: {last_line.strip()}")

        def _lost(self, job_id: str, overrides: Sequence[str], job_num: int, why: str) -> JobReturn:
            """One line naming the lost job and why (its SLURM state or its error), its record for the
            sweep's summary, and NaN for the sweeper (as a sweep job that failed returns, ganlab.train)."""
            from ganlab.sweeps import sweep
            from ganlab.tracking import store as tracking

            assert self.config is not None
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            what = f"SLURM job {job_id} {why}"
            name = tracking.run_name(overrides, keys=sweep.read_sweep_file(sweep_dir).get("swept_keys"))
            _say(f"ganlab: sweep job {job_num} ({name}) did not finish: {what}")
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
            _say(f"error: {message}")
            raise SystemExit(1)  # not an Exception: Hydra would print a traceback

        def _cancel_on_interrupt(self, jobs: dict[int, object]) -> None:
            """Ctrl-C or SIGTERM of the sweep: cancel its unfinished jobs ({job number: submitit job}),
            wait for SLURM to end them (each closes its run KILLED on SLURM's SIGTERM), and close KILLED
            the runs of those SLURM had to SIGKILL after KillWait, which could not."""
            ids = {job_num: job.job_id for job_num, job in jobs.items()}
            if not ids:
                return
            slurm.cancel(list(ids.values()))
            _say(f"ganlab: sweep interrupted: cancelled its {len(ids)} unfinished SLURM job(s) "
                 f"{', '.join(ids.values())}")
            limit = slurm.kill_wait_s() + CLOSE_MARGIN_S
            deadline = time.time() + limit
            ended: set[str] = set()
            try:
                while time.time() < deadline:
                    states = slurm.job_states(list(ids.values()))
                    if states is not None:
                        ended = {job_id for job_id in ids.values()
                                 if not slurm_wait.is_active(states.get(job_id, (None,))[0])}
                        if len(ended) == len(ids):
                            break
                    time.sleep(POLL_S)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                pass
            assert self.config is not None
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            closed = [str(job_num) for job_num, job_id in ids.items() if job_id in ended and slurm.close_left_run(
                sweep_dir, job_num, f"SLURM job {job_id} was cancelled (the sweep was interrupted) and killed before "
                "it could close its run", self.config.tracking.uri, self.config.tracking.experiment, status="KILLED")]
            if closed:
                _say(f"ganlab: closed KILLED the run(s) of sweep job(s) {', '.join(closed)}: SLURM killed them "
                     "before they could close their runs")
            if len(ended) < len(ids):
                left = [job_id for job_id in ids.values() if job_id not in ended]
                _say(f"ganlab: SLURM job(s) {', '.join(left)} had not ended {limit} s after they were cancelled; "
                     "their runs may show RUNNING until they end (sweep.resume continues them)")

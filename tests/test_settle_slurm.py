"""A settle sweep on the one-node SLURM cluster (scripts/slurm-up.sh; skipped where it is not up, as
tests/test_slurm.py is): the pilot and stage 2 each go to SLURM as a job array, and the verdict
reads the scores the jobs logged from their nodes. It is also the test of a sweep's jobs as SLURM
array tasks: each one's console log, one line per epoch, and the parent's summary."""

from __future__ import annotations

import pytest

from conftest import artifact_paths, run_cli, store_client
from ganlab.sweeps import settle, settle_report
from ganlab.tracking import store as tracking
from test_settle import settings_and_seeds, sweep_runs
from test_slurm import SLURM, TINY, TQDM_MARKS, cluster, sweep_dir


@pytest.mark.heavy
@cluster
def test_a_settle_sweep_runs_its_pilot_and_stage_2_as_job_arrays(workdir):
    done = run_cli([*SLURM, "hydra/sweeper=settle", "dropout=0.1,0.5", "settle.margin=0.001", "settle.pilot_seeds=2",
                    "settle.max_seeds=3", *TINY, "epochs=1"], workdir, timeout=1500)  # 6 jobs in two arrays
    assert done.returncode == 0, done.stderr[-3000:]
    parent, jobs, _ = sweep_runs(workdir)
    assert sorted(jobs) == list(range(6))  # 4 pilot jobs, then 2 in stage 2: max_seeds for both settings
    assert settings_and_seeds(jobs.values()) == [(d, str(s)) for d in ("0.1", "0.5") for s in range(3)]
    assert all(run.info.status == "FINISHED" for run in jobs.values())
    assert parent.data.tags[f"{settle_report.VERDICT_TAG}dropout_0.5"] in (settle.UNDECIDED, settle.BETTER, settle.WORSE)
    arrays = {path.name.split("_")[0] for path in sweep_dir(workdir).glob(".submitit/*_*") if path.is_dir()}
    assert len(arrays) == 2  # one SLURM array per stage
    assert store_client(workdir).get_run(parent.info.run_id).data.tags[tracking.NOTE_TAG].startswith("**Settled**")
    assert parent.info.status == "FINISHED"
    assert "summary/sweep_summary.csv" in artifact_paths(store_client(workdir), parent.info.run_id)
    logs = list(sweep_dir(workdir).glob(".submitit/*_*/*_log.*"))
    assert len(logs) == 12  # stdout and stderr of the 6 jobs, which really ran under SLURM
    text = "".join(log.read_text() for log in logs)
    assert text.count("epoch 1/1") == 6  # the one-line-per-epoch console ...
    assert not any(mark in text for mark in TQDM_MARKS)  # ... and no progress bars
    assert "Bypassing sacct" not in done.stdout + done.stderr

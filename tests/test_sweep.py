"""Multirun sweeps through the real CLI: parent and child runs, summaries, failures, parallel jobs,
and the same runs read back over REST from a real `mlflow server`."""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK, all_runs, artifact_paths, run_cli, store_client


def split_parent(runs):
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1
    assert all(child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for child in children)
    return parents[0], sorted(children, key=lambda child: int(child.data.tags["sweep.job_num"]))


@pytest.fixture(scope="module")
def dropout_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_cli(["-m", "dropout=0.1,0.3", *QUICK], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


def test_sweep_makes_a_parent_and_finished_children(dropout_sweep):
    parent, children = split_parent(all_runs(dropout_sweep))
    assert parent.info.status == "FINISHED"
    assert [child.info.status for child in children] == ["FINISHED", "FINISHED"]
    assert [child.data.params["dropout"] for child in children] == ["0.1", "0.3"]
    assert len({child.data.tags["sweep.id"] for child in children}) == 1


def test_sweep_summary_is_on_the_parent(dropout_sweep):
    client = store_client(dropout_sweep)
    parent, children = split_parent(all_runs(dropout_sweep))
    artifacts = artifact_paths(client, parent.info.run_id)
    assert {"summary/sweep_summary.csv", "summary/sweep_summary.md", "summary/sweep_samples.png"} <= artifacts
    table = client.download_artifacts(parent.info.run_id, "summary/sweep_summary.csv", str(dropout_sweep))
    with open(table) as stream:
        rows = list(csv.DictReader(stream))
    assert [row["dropout"] for row in rows] == ["0.1", "0.3"]
    assert [float(row["fid"]) for row in rows] == pytest.approx([child.data.metrics["fid"] for child in children])
    assert all(row["status"] == "FINISHED" for row in rows)


def test_failed_job_is_recorded_and_the_sweep_goes_on(workdir):
    result = run_cli(["-m", "dropout=1.5,0.2", *QUICK], workdir)
    assert result.returncode != 0
    assert "1 of 2 sweep jobs did not finish" in result.stderr
    parent, children = split_parent(all_runs(workdir))
    assert [child.info.status for child in children] == ["FAILED", "FINISHED"]
    assert "dropout: got 1.5" in children[0].data.tags["failure_reason"]
    assert "error.txt" in artifact_paths(store_client(workdir), children[0].info.run_id)
    assert "fid" in children[1].data.metrics
    assert parent.info.status == "FAILED"
    assert "summary/sweep_summary.csv" in artifact_paths(store_client(workdir), parent.info.run_id)


def test_parallel_launcher_runs_every_job_with_every_epoch(workdir):
    args = ["-m", "hydra/launcher=parallel", "dropout=0.0,0.3", "label_smoothing=0.0,0.2", *QUICK, "epochs=2"]
    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    client = store_client(workdir)
    parent, children = split_parent(all_runs(workdir))
    assert len(children) == 4 and all(child.info.status == "FINISHED" for child in children)
    assert {(c.data.params["dropout"], c.data.params["label_smoothing"]) for c in children} == {
        ("0.0", "0.0"), ("0.0", "0.2"), ("0.3", "0.0"), ("0.3", "0.2")}
    for child in children:
        assert child.data.params["threads"] == str(max(1, os.cpu_count() // 2))  # null: the job takes cores / n_jobs
        for metric in ("d_loss", "g_loss", "steps_per_sec"):
            assert [point.step for point in client.get_metric_history(child.info.run_id, metric)] == [1, 2]
    assert "summary/sweep_heatmap_fid.png" in artifact_paths(client, parent.info.run_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_runs_read_back_through_a_real_mlflow_server(dropout_sweep):
    port = free_port()
    store = f"sqlite:///{dropout_sweep / 'mlruns' / 'mlflow.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=dropout_sweep, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        remote = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while True:
            try:
                experiment = remote.get_experiment_by_name("ganlab")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        over_rest = {run.info.run_id: run for run in remote.search_runs([experiment.experiment_id])}
        local = {run.info.run_id: run for run in all_runs(dropout_sweep)}
        assert set(over_rest) == set(local) and len(local) == 3
        for run_id, run in local.items():
            assert over_rest[run_id].info.status == run.info.status
            assert over_rest[run_id].data.params == run.data.params
            assert over_rest[run_id].data.metrics == run.data.metrics
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_tables_a_sweep_by_group(dropout_sweep):
    result = run_cli(["--by", "dropout", "--epochs", "1", "--metrics", "fid,g_loss", "--out", "report"],
                     dropout_sweep, module="ganlab.report")
    assert result.returncode == 0, result.stderr[-2000:]
    table = (dropout_sweep / "report" / "scores.md").read_text()
    parent, children = split_parent(all_runs(dropout_sweep))
    assert parent.info.run_id in table
    for child in children:
        assert f"**dropout={child.data.params['dropout']} (1 run)**" in table
        assert f"| 1 | {child.data.metrics['fid']:.3g} ± n/a | {child.data.metrics['g_loss']:.3g} ± n/a |" in table
    assert (dropout_sweep / "report" / "samples_0.1.png").read_bytes()[:4] == b"\x89PNG"
    assert (dropout_sweep / "report" / "sweep_samples.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((dropout_sweep / "report").glob("grid_*"))  # the downloaded grids stay out of the report


FAULTS = '''
"""Fault injection for one test: an unexpected error in two jobs of a sweep (by their dropout)."""
import os

if os.environ.get("GANLAB_TEST_FAULTS"):
    import ganlab.core.config
    import ganlab.training.job

    checks, build = ganlab.core.config.validate_tracking, ganlab.training.job.build_trainer

    def validate_tracking(cfg):
        if cfg.dropout == 0.1:  # before the job's MLflow run exists
            raise RuntimeError("injected fault before the run")
        return checks(cfg)

    def build_trainer(cfg, dataset):
        if cfg.dropout == 0.5:  # after the run exists
            raise RuntimeError("injected fault after the run")
        return build(cfg, dataset)

    ganlab.core.config.validate_tracking, ganlab.training.job.build_trainer = validate_tracking, build_trainer
'''


def test_an_unexpected_error_in_a_sweep_job_is_printed_and_counted(workdir, tmp_path):
    """Nothing silent: each failing job prints its error, its run (if any) ends FAILED, and the
    parent counts both jobs, with and without a run, among those that did not finish."""
    injected = tmp_path / "faults"
    injected.mkdir()
    (injected / "sitecustomize.py").write_text(FAULTS)
    env = {"GANLAB_TEST_FAULTS": "1", "PYTHONPATH": os.pathsep.join([str(injected), os.environ.get("PYTHONPATH", "")])}
    result = run_cli(["-m", "dropout=0.1,0.3,0.5", *QUICK], workdir, env=env)
    assert result.returncode == 1
    assert "RuntimeError: injected fault before the run" in result.stderr
    assert "RuntimeError: injected fault after the run" in result.stderr
    assert "Traceback" in result.stdout  # the job's log line carries the traceback
    assert "2 of 3 sweep jobs did not finish" in result.stderr
    parent, children = split_parent(all_runs(workdir))
    assert [child.data.params["dropout"] for child in children] == ["0.3", "0.5"]
    assert [child.info.status for child in children] == ["FINISHED", "FAILED"]
    assert "injected fault after the run" in children[1].data.tags["failure_reason"]
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.jobs"] == "1 of 3 finished"
    description = parent.data.tags["mlflow.note.content"]
    assert "**2 of 3 jobs did not finish:**" in description
    assert re.search(r"job 0 \(dropout=0\.1 [^)]*\): failed before its MLflow run existed", description)
    assert re.search(r"job 2 \(dropout=0\.5 [^)]*\): RuntimeError: injected fault after the run", description)

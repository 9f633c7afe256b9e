"""Multirun sweeps through the real CLI: parent and child runs, summaries, failures, parallel jobs,
and the same runs read back over REST from a real `mlflow server`."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK, SHARED_EPOCHS, SHARED_SEEDS, all_runs, artifact_paths, run_cli, start_cli, store_client, sweep_runs
from ganlab import report


def test_sweep_makes_a_parent_and_finished_children(dropout_sweep):
    parent, children = dropout_sweep.parent, dropout_sweep.children
    assert parent.info.status == "FINISHED"
    assert [child.info.status for child in children] == ["FINISHED"] * 4
    assert [(child.data.params["dropout"], child.data.params["seed"]) for child in children] == [
        (dropout, seed) for dropout in ("0.1", "0.3") for seed in SHARED_SEEDS]
    assert len({child.data.tags["sweep.id"] for child in children}) == 1
    assert all(child.data.tags["mlflow.parentRunId"] == parent.info.run_id for child in children)


def test_sweep_summary_is_on_the_parent(dropout_sweep, tmp_path):
    client = store_client(dropout_sweep.cwd)
    parent, children = dropout_sweep.parent, dropout_sweep.children
    artifacts = artifact_paths(client, parent.info.run_id)
    assert {"summary/sweep_summary.csv", "summary/sweep_summary.md", "summary/sweep_samples.png"} <= artifacts
    table = client.download_artifacts(parent.info.run_id, "summary/sweep_summary.csv", str(tmp_path))
    with open(table) as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["dropout"], row["seed"]) for row in rows] == [
        (child.data.params["dropout"], child.data.params["seed"]) for child in children]  # in job order
    assert [float(row["fid"]) for row in rows] == pytest.approx([child.data.metrics["fid"] for child in children])
    assert all(row["status"] == "FINISHED" for row in rows)


@pytest.mark.bare_workdir
@pytest.mark.heavy
def test_four_parallel_jobs_and_another_sweep_at_once_into_one_fresh_store_each_job_with_every_epoch(workdir):
    """The parallel launcher with four jobs at once (twice the cores here) and, started beside it, a second
    sweep of two jobs in turn, all writing into a store none of them found: no lost write, every job FINISHED
    under its own parent with every epoch, the parallel jobs sharing the cores out, and the summary's heatmap. Its
    objective is higher-is-better: the best job is the one with the highest score (every objective's direction:
    test_registry.py)."""
    parallel = ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=4", "dropout=0.0,0.3", "label_smoothing=0.0,0.2",
                *QUICK, "epochs=2", "steps_per_epoch=3", "objective=classifier_score"]
    in_turn = ["-m", "dropout=0.1,0.2", *QUICK, "epochs=1", "steps_per_epoch=3", "eval.enabled=false", "objective=g_loss"]
    processes = [start_cli(parallel, workdir), start_cli(in_turn, workdir)]
    for process in processes:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
        assert "database is locked" not in stderr
    client = store_client(workdir)
    runs = all_runs(workdir)
    parents = {run.info.run_id: run for run in runs if run.data.tags.get("sweep.parent") == "true"}
    children = {parent: [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent] for parent in parents}
    assert len(parents) == 2 and sum(map(len, children.values())) == len(runs) - 2 == 6
    assert all(run.info.status == "FINISHED" for run in runs)
    (parent,) = [parents[run_id] for run_id, mine in children.items() if len(mine) == 4]
    (other,) = [mine for mine in children.values() if len(mine) == 2]
    assert sorted(child.data.params["dropout"] for child in other) == ["0.1", "0.2"]
    mine = children[parent.info.run_id]
    assert sorted((c.data.params["dropout"], c.data.params["label_smoothing"]) for c in mine) == [
        (dropout, smoothing) for dropout in ("0.0", "0.3") for smoothing in ("0.0", "0.2")]
    for child in mine:
        assert child.data.params["threads"] == str(max(1, os.cpu_count() // 4))  # null: the job takes cores / n_jobs
        for metric in ("d_loss", "g_loss", "d_real", "d_fake", "steps_per_sec"):
            assert [point.step for point in client.get_metric_history(child.info.run_id, metric)] == [1, 2], metric
    assert "summary/sweep_heatmap_fid.png" in artifact_paths(client, parent.info.run_id)
    best = max(mine, key=lambda child: child.data.metrics["classifier_score"])
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert float(parent.data.tags["best.classifier_score"]) == pytest.approx(best.data.metrics["classifier_score"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_runs_read_back_through_a_real_mlflow_server(dropout_sweep):
    port = free_port()
    store = f"sqlite:///{dropout_sweep.cwd / 'mlruns' / 'mlflow.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=dropout_sweep.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
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
        local = {run.info.run_id: run for run in all_runs(dropout_sweep.cwd)}
        assert set(over_rest) == set(local) and len(local) == 1 + len(dropout_sweep.children)
        for run_id, run in local.items():
            assert over_rest[run_id].info.status == run.info.status
            assert over_rest[run_id].data.params == run.data.params
            assert over_rest[run_id].data.metrics == run.data.metrics
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:  # a loaded machine: do not leave it behind
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_report_tables_a_sweep_by_group(dropout_sweep, tmp_path, capsys):
    """In-process (the report's CLI itself runs in test_defensible_scores): the newest sweep, grouped by dropout."""
    out = tmp_path / "report"
    uri = f"sqlite:///{dropout_sweep.cwd / 'mlruns' / 'mlflow.db'}"
    assert report.main(["--tracking-uri", uri, "--by", "dropout", "--epochs", str(SHARED_EPOCHS), "--metrics", "fid,g_loss",
                        "--out", str(out)]) == 0, capsys.readouterr().err[-2000:]
    table = (out / "scores.md").read_text()
    parent, children = dropout_sweep.parent, dropout_sweep.children
    assert parent.info.run_id in table
    for dropout in ("0.1", "0.3"):  # two seeds each: their mean and sample std, computed here
        fid, g_loss = ([child.data.metrics[metric] for child in children if child.data.params["dropout"] == dropout]
                       for metric in ("fid", "g_loss"))
        assert f"**dropout={dropout} (2 runs)**" in table
        cells = [f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}" for values in (fid, g_loss)]
        assert f"| {SHARED_EPOCHS} | {cells[0]} | {cells[1]} |" in table
    assert (out / "samples_0.1.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sweep_samples.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("grid_*"))  # the downloaded grids stay out of the report


FAULTS = '''
"""Fault injection for one test: an unexpected error in two jobs of a sweep (by their learning rate)."""
import os

if os.environ.get("GANLAB_TEST_FAULTS"):
    import ganlab.core.config
    import ganlab.gan.choices

    checks, build = ganlab.core.config.validate_tracking, ganlab.gan.choices.build_trainer

    def validate_tracking(cfg):
        if cfg.optimizer.lr == 1e-4:  # before the job's MLflow run exists
            raise RuntimeError("injected fault before the run")
        return checks(cfg)

    def build_trainer(cfg, x_train):
        if cfg.optimizer.lr == 3e-4:  # after the run exists
            raise RuntimeError("injected fault after the run")
        return build(cfg, x_train)

    ganlab.core.config.validate_tracking, ganlab.gan.choices.build_trainer = validate_tracking, build_trainer
'''


def test_failed_and_diverged_jobs_are_printed_counted_and_recorded_and_the_sweep_goes_on(workdir, tmp_path):
    """Nothing silent, in one sweep of four jobs: an unexpected error before the job's run exists and one
    after it; a job whose losses turn NaN, the refusal only training can find (a bad config value is refused
    before the sweep starts: test_sweep_precheck.py), FAILED with its epoch and step and error.txt, printed
    once with no traceback (the entry point's path for every refused job, sweep or not); and a job that
    finishes. The parent counts the three among those that did not finish, ends FAILED and still holds the summary."""
    injected = tmp_path / "faults"
    injected.mkdir()
    (injected / "sitecustomize.py").write_text(FAULTS)
    env = {"GANLAB_TEST_FAULTS": "1", "PYTHONPATH": os.pathsep.join([str(injected), os.environ.get("PYTHONPATH", "")])}
    result = run_cli(["-m", "optimizer.lr=1e-4,1e10,2e-4,3e-4", *QUICK], workdir, env=env)
    assert result.returncode == 1
    assert "RuntimeError: injected fault before the run" in result.stderr
    assert "RuntimeError: injected fault after the run" in result.stderr
    assert "Traceback" in result.stdout and "Traceback" not in result.stderr  # the job's log line carries it
    assert "3 of 4 sweep jobs did not finish" in result.stderr
    parent, children = sweep_runs(workdir)
    assert [child.data.tags["sweep.job_num"] for child in children] == ["1", "2", "3"]  # job 0 never had a run
    assert [child.data.params.get("optimizer.lr") for child in children] == ["10000000000.0", "0.0002", "0.0003"]
    assert [child.info.status for child in children] == ["FAILED", "FINISHED", "FAILED"]
    diverged = re.search(r"training diverged at epoch 1, step \d+ of 5.*", children[0].data.tags["failure_reason"])
    assert diverged and result.stderr.count(f"error: {diverged.group(0)}") == 1
    client = store_client(workdir)
    assert "error.txt" in artifact_paths(client, children[0].info.run_id)
    assert "fid" in children[1].data.metrics
    assert "injected fault after the run" in children[2].data.tags["failure_reason"]
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.jobs"] == "1 of 4 finished"
    assert "summary/sweep_summary.csv" in artifact_paths(client, parent.info.run_id)
    description = parent.data.tags["mlflow.note.content"]
    assert "**3 of 4 jobs did not finish:**" in description
    assert re.search(r"job 0 \(optimizer\.lr=[^)]*\): failed before its MLflow run existed", description)
    assert re.search(r"job 1 \(optimizer\.lr=[^)]*\): TrainingDiverged: training diverged at epoch 1", description)
    assert re.search(r"job 3 \(optimizer\.lr=[^)]*\): RuntimeError: injected fault after the run", description)

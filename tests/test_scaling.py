"""Beyond one process: submitit's local executor writing to an MLflow server backed by PostgreSQL,
leaving a parent run with FINISHED children (an Optuna search through the CLI: test_search.py)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK, artifact_paths, run_cli

TINY = [*QUICK, "steps_per_epoch=3"]


def parent_and_children(runs):
    parents = [run for run in runs if run.data.tags.get("sweep.parent") == "true"]
    assert len(parents) == 1
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def as_postgres_user(command: list[str], **kwargs):
    """PostgreSQL refuses to run as root: run its tools as the 'postgres' user when we are root."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1; yields its port."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing; .ci/run installs them (apt-get install postgresql)")
        pytest.skip("PostgreSQL server is not installed here (apt-get install postgresql)")
    # Its own folder outside pytest's root-only tmp tree, so the postgres user can reach it.
    data = Path(tempfile.mkdtemp(prefix="ganlab-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = free_port()
    as_postgres_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust"])
    as_postgres_user([pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-w", "start",
                      "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1"])
    try:
        yield port
    finally:
        as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.bare_workdir
@pytest.mark.heavy
def test_a_submitit_local_sweep_against_an_mlflow_server_on_postgresql(workdir, postgres):
    """submitit's local executor runs the jobs, each in a process of its own, writing to an MLflow server whose
    store is PostgreSQL and whose artifacts it serves."""
    import psycopg

    # autocommit: CREATE DATABASE cannot run inside a transaction
    with psycopg.connect(host="127.0.0.1", port=postgres, user="postgres", dbname="postgres", autocommit=True) as connection:
        connection.execute("CREATE DATABASE mlflow")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"postgresql://postgres@127.0.0.1:{postgres}/mlflow",
         "--artifacts-destination", str(workdir / "served-artifacts")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "w"),
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                import requests

                requests.get(f"{uri}/health", timeout=2).raise_for_status()
                break
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline, (workdir / "server.log").read_text()[-3000:]
                time.sleep(1)
        result = run_cli(["-m", "hydra/launcher=local", "dropout=0.1,0.3", *TINY, f"tracking.uri={uri}"], workdir)
        assert result.returncode == 0, result.stderr[-3000:]
        remote = MlflowClient(tracking_uri=uri)
        experiment = remote.get_experiment_by_name("ganlab")
        parent, children = parent_and_children(remote.search_runs([experiment.experiment_id]))
        assert parent.info.status == "FINISHED"
        assert sorted(c.data.params["dropout"] for c in children) == ["0.1", "0.3"]
        assert all(c.info.status == "FINISHED" and "fid" in c.data.metrics for c in children)
        for child in children:
            assert {"models/generator.keras", "train.log"} <= artifact_paths(remote, child.info.run_id)
        assert not (workdir / "mlruns").exists()  # nothing went to the local default store
        assert list(workdir.glob("outputs/multirun/*/.submitit"))  # really went through submitit
    finally:
        server.terminate()
        server.wait(timeout=30)

"""`ganlab.report` checks its arguments before it reads or writes anything: unknown --by keys,
an empty --metrics, an --out that cannot be a folder, and a refused --reference leaves no --out."""

from __future__ import annotations


import pytest
from mlflow.tracking import MlflowClient

from ganlab import report


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> str:
    """A small sweep written straight into a SQLite store: 2 dropouts x 2 seeds, d_loss at epochs 1 and 2."""
    folder = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("ganlab")
    parent = client.create_run(experiment, tags={"sweep.parent": "true"})
    number = 0
    for dropout in ("0.1", "0.3"):
        for seed in ("0", "1"):
            child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id, "sweep.job_num": str(number)})
            client.log_param(child.info.run_id, "dropout", dropout)
            client.log_param(child.info.run_id, "seed", seed)
            for epoch in (1, 2):
                client.log_metric(child.info.run_id, "d_loss", 0.5 + 0.1 * epoch + float(dropout) + 0.01 * int(seed), step=epoch)
            client.set_terminated(child.info.run_id, "FINISHED")
            number += 1
    client.set_terminated(parent.info.run_id, "FINISHED")
    return uri


def refuse(args: list[str], capsys) -> str:
    assert report.main(args) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    (line,) = captured.err.strip().splitlines()
    return line


def test_an_unknown_by_key_is_refused(sweep_store, tmp_path, capsys):
    out = tmp_path / "report"
    line = refuse(["--tracking-uri", sweep_store, "--by", "nosuchkey", "--metrics", "d_loss", "--out", str(out)], capsys)
    assert line == "error: --by: nosuchkey is not a param of the sweep's runs; they have: dropout, seed."
    assert not out.exists()


def test_an_empty_metrics_list_is_refused(sweep_store, tmp_path, capsys):
    out = tmp_path / "report"
    line = refuse(["--tracking-uri", sweep_store, "--by", "dropout", "--metrics", ",", "--out", str(out)], capsys)
    assert line == "error: --metrics: got ','; name at least one metric, e.g. --metrics fid,recall."
    assert not out.exists()


def test_an_out_under_a_regular_file_is_refused_before_anything_is_written(sweep_store, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = refuse(["--tracking-uri", sweep_store, "--by", "dropout", "--metrics", "d_loss", "--out", str(blocker / "report")], capsys)
    assert line == f"error: --out: {str(blocker)!r} is a file, not a folder; give a folder for the report."
    assert blocker.read_text() == "not a folder"


def test_a_refused_reference_leaves_no_out_folder(sweep_store, tmp_path, capsys):
    out = tmp_path / "new" / "report"
    line = refuse(["--tracking-uri", sweep_store, "--by", "dropout", "--reference", "dropout=0.9", "--metrics", "d_loss",
                   "--out", str(out)], capsys)
    assert line.startswith("error: --reference:")
    assert not out.exists()


def test_a_valid_report_still_works(sweep_store, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main(["--tracking-uri", sweep_store, "--by", "dropout", "--metrics", "d_loss", "--epochs", "1,2",
                        "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "comparison.csv").is_file()

"""`ganlab.report` checks its arguments before it reads or writes anything: unknown --by keys,
an empty --metrics, an --out that cannot be a folder, and a refused --reference leaves no --out."""

from __future__ import annotations


import pytest
from mlflow.tracking import MlflowClient

from conftest import new_store
from ganlab import report


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> str:
    """A small sweep written straight into a SQLite store: 2 dropouts x 2 seeds, d_loss at epochs 1 and 2."""
    folder = tmp_path_factory.mktemp("report_store")
    uri = new_store(folder / "mlflow.db")
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


def test_no_run_at_the_asked_epochs_is_one_line_and_no_out(sweep_store, tmp_path, capsys):
    out = tmp_path / "report"
    line = refuse(["--tracking-uri", sweep_store, "--by", "dropout", "--metrics", "d_loss", "--epochs", "5,10",
                   "--out", str(out)], capsys)
    assert line.startswith("error: --epochs:") and "at epochs 1,2" in line
    assert not out.exists()


def test_a_reused_out_holds_only_the_new_report_and_the_users_own_files(sweep_store, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "samples_0.9.png").write_bytes(b"an earlier report's group")
    (out / "notes.txt").write_text("mine")
    assert report.main(["--tracking-uri", sweep_store, "--by", "dropout", "--metrics", "d_loss", "--epochs", "1,2",
                        "--out", str(out)]) == 0, capsys.readouterr().err
    assert not (out / "samples_0.9.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert (out / "comparison.csv").is_file()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        report.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1,5,10,25,50)" in text and "(default: report)" in text


def write_sweep(client, experiment: str, start_time: int, child_status: str, name: str) -> str:
    """A sweep parent with two children ending `child_status`, each with d_loss at epochs 1 and 2."""
    parent = client.create_run(experiment, start_time=start_time, run_name=name, tags={"sweep.parent": "true"})
    for number, dropout in enumerate(("0.1", "0.3")):
        child = client.create_run(experiment, start_time=start_time + 1 + number,
                                  tags={"mlflow.parentRunId": parent.info.run_id, "sweep.job_num": str(number)})
        client.log_param(child.info.run_id, "dropout", dropout)
        for epoch in (1, 2):
            client.log_metric(child.info.run_id, "d_loss", 0.5 + 0.1 * epoch + float(dropout), step=epoch)
        if child_status != "RUNNING":
            client.set_terminated(child.info.run_id, child_status)
    client.set_terminated(parent.info.run_id, "KILLED" if child_status != "FINISHED" else "FINISHED")
    return parent.info.run_id


def test_without_parent_the_newest_sweep_with_finished_runs_is_taken_and_named(tmp_path, capsys):
    """A newer sweep that was stopped (its jobs KILLED) and a still running one are passed over, and the output says which
    sweep the report is on and how to pick another."""
    uri = new_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("ganlab")
    finished = write_sweep(client, experiment, 1_000_000, "FINISHED", "finished-sweep")
    write_sweep(client, experiment, 2_000_000, "KILLED", "stopped-sweep")
    write_sweep(client, experiment, 3_000_000, "RUNNING", "running-sweep")
    out = tmp_path / "report"
    assert report.main(["--tracking-uri", uri, "--by", "dropout", "--metrics", "d_loss", "--epochs", "1,2",
                        "--out", str(out)]) == 0, capsys.readouterr().err
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f'report on sweep {finished} ("finished-sweep"), the newest with finished runs; 2 newer sweeps '
                     "without finished runs passed over; --parent <run id> picks another.")
    assert finished in (out / "scores.md").read_text()


def test_without_parent_and_no_sweep_with_finished_runs_the_error_names_parent(tmp_path, capsys):
    uri = new_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("ganlab")
    stopped = write_sweep(client, experiment, 1_000_000, "KILLED", "stopped-sweep")
    out = tmp_path / "report"
    line = refuse(["--tracking-uri", uri, "--by", "dropout", "--metrics", "d_loss", "--out", str(out)], capsys)
    assert line == (f"error: --parent: the one sweep of experiment 'ganlab' has no finished runs (the newest is "
                    f"{stopped}); let one finish, or name a sweep's parent run with --parent <run id>.")
    assert not out.exists()


def test_scores_table_says_one_run_and_no_spread_for_a_group_of_one(tmp_path, capsys):
    uri = new_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("ganlab")
    write_sweep(client, experiment, 1_000_000, "FINISHED", "one-seed")
    out = tmp_path / "report"
    assert report.main(["--tracking-uri", uri, "--by", "dropout", "--metrics", "d_loss", "--epochs", "1,2",
                        "--out", str(out)]) == 0, capsys.readouterr().err
    table = (out / "scores.md").read_text()
    assert "**dropout=0.1 (1 run)**" in table and "(1 runs)" not in table
    assert "| 1 | 0.7 ± n/a |" in table and "± 0 " not in table and "± 0\n" not in table
    assert "2 finished runs;" in table
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[1].split(",")[4] == ""  # no std from one value

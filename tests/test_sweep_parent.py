"""What a sweep's parent run shows in the MLflow UI, read back after one real 4-job sweep through the
CLI (conftest's shared sweep: two settings, two seeds each, two epochs, both evaluated): a montage image per epoch, no scores of its own, a readable
description, a runs-table view of its children best first; and the names and links ganlab writes."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_EPOCHS as EPOCHS, artifact_paths, store_client
from ganlab.core import scores
from ganlab.sweeps import summary as sweep_report
from ganlab.tracking import store as tracking
from ganlab.sweeps.sweep import SUMMARY


@pytest.fixture(scope="module")
def sweep(dropout_sweep):
    """conftest's shared sweep, its jobs best first."""
    cwd, result, parent, children = dropout_sweep
    assert parent.data.tags[tracking.SWEEP_PARENT_TAG] == "true"
    assert all(child.data.tags[tracking.PARENT_RUN_TAG] == parent.info.run_id for child in children)
    # lowest fid first; a tie in job order, as the sweep ranks them
    best_first = sorted(children, key=lambda run: (run.data.metrics[scores.FID], int(run.data.tags[tracking.JOB_NUM_TAG])))
    return cwd, result, parent, best_first


def step_images(client, run_id: str, key: str) -> dict[int, str]:
    found = {}
    for path in artifact_paths(client, run_id, sweep_report.IMAGES_DIR):
        match = sweep_report.STEP_IMAGE.match(path)
        if match and match["key"] == key:
            found[int(match["step"])] = path
    return found


def test_the_parent_logs_a_montage_of_the_jobs_grids_at_every_epoch(sweep, tmp_path):
    cwd, _, parent, children = sweep
    client = store_client(cwd)
    montages = step_images(client, parent.info.run_id, sweep_report.SAMPLES_KEY)
    # every epoch, and the final montage again at the step the UI's image card opens on
    assert sorted(montages) == sorted({sweep_report.LATEST_STEP, *range(1, EPOCHS + 1)})
    assert parent.data.tags.get("mlflow.loggedImages") == "True"  # what makes the UI offer the image card
    grid = step_images(client, children[0].info.run_id, sweep_report.SAMPLES_KEY)[EPOCHS]
    with Image.open(client.download_artifacts(children[0].info.run_id, grid, str(tmp_path))) as child_grid:
        grid_width = child_grid.size[0]
    with Image.open(client.download_artifacts(parent.info.run_id, montages[EPOCHS], str(tmp_path))) as montage:
        assert montage.size[0] > 2 * grid_width  # two tiles side by side, not one job's grid
    final = client.download_artifacts(parent.info.run_id, f"summary/{sweep_report.MONTAGE}", str(tmp_path))
    latest = client.download_artifacts(parent.info.run_id, montages[sweep_report.LATEST_STEP], str(tmp_path))
    with Image.open(latest) as latest, Image.open(final) as kept:
        assert np.array_equal(np.asarray(latest.convert("RGB")), np.asarray(kept.convert("RGB")))


def test_the_parent_does_not_pose_as_a_run(sweep):
    _, _, parent, children = sweep
    best = children[0]
    # its own metrics (no empty Metrics card) under names no job logs and no score resembles: it sorts nowhere
    # among its children; two seeds per setting, so the best setting's mean and its interval
    # (their values: test_registry.py::test_the_best_job_is_tagged_and_its_setting_gets_the_mean_of_its_seeds_and_its_interval)
    assert set(parent.data.metrics) == {scores.sweep_best(scores.FID, bound) for bound in (None, *scores.INTERVAL_BOUNDS)}
    assert not any(scores.is_known(name) for name in parent.data.metrics)
    assert "dropout" not in parent.data.params
    # its params (no empty Parameters card): what was swept, as typed, and what every job was given
    assert parent.data.params[tracking.SWEEP_SWEPT_PARAM + "dropout"] == "0.1,0.3"
    assert parent.data.params[tracking.SWEEP_SWEPT_PARAM + "seed"] == "0,1"
    assert parent.data.params[tracking.SWEEP_FIXED_PARAM + "epochs"] == str(EPOCHS)
    assert parent.data.params[tracking.SWEEP_FIXED_PARAM + "eval.num_samples"] == "300"
    assert not set(parent.data.params) & set().union(*(child.data.params for child in children))
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert float(parent.data.tags[f"best.{scores.FID}"]) == best.data.metrics[scores.FID]
    assert "dropout=" in parent.data.tags["best.overrides"]


def test_the_curves_name_every_job_best_first(sweep, tmp_path):
    """The summary's overlaid curves of the objective: one line per job and a legend naming every job, best
    first (marked), with the value it returned."""
    from PIL import Image

    from ganlab.sweeps import pictures

    cwd, result, parent, children = sweep
    client = store_client(cwd)
    name = f"{SUMMARY}/sweep_curves_{scores.FID}.png"
    assert name in artifact_paths(client, parent.info.run_id) and "curves" in result.stdout
    with Image.open(client.download_artifacts(parent.info.run_id, name, str(tmp_path))) as picture:
        assert picture.size[0] > picture.size[1]  # the plot, its legend beside it
    summary = sweep_report.SweepSummary(keys=["dropout", "seed"], ranked=children, best=children[0],
                                        best_metric=scores.FID, rank_metric=scores.FID)
    lines = pictures.curve_lines(client, summary)
    shown = scores.format_column(scores.FID, [child.data.metrics[scores.FID] for child in children])
    assert [label for label, _, _ in lines] == [
        f"{sweep_report.BEST_MARK * (child is children[0])}{' ' * (child is children[0])}dropout="
        f"{child.data.params['dropout']} seed={child.data.params['seed']}: {scores.FID} {value}"
        for child, value in zip(children, shown)]
    assert all(epochs == list(range(1, EPOCHS + 1)) and len(values) == EPOCHS for _, epochs, values in lines)
    # grouped by a key the runs share (a report --by a setting): each run's label names its seed too
    shared = sweep_report.SweepSummary(keys=["epochs"], ranked=children, best_metric=scores.FID, rank_metric=scores.FID)
    labels = [label for label, _, _ in pictures.curve_lines(client, shared)]
    assert labels == [f"epochs={EPOCHS} seed={child.data.params['seed']}: {scores.FID} {value}"
                      for child, value in zip(children, shown)]


def test_the_labels_of_one_picture_give_a_score_one_number_of_decimals():
    from types import SimpleNamespace

    from ganlab.sweeps import pictures

    def job(dropout, status="FINISHED"):
        return SimpleNamespace(info=SimpleNamespace(run_id=dropout, status=status),
                               data=SimpleNamespace(params={"dropout": dropout}, tags={}, metrics={}))

    summary = sweep_report.SweepSummary(keys=["dropout"])
    tiles = [(job("0.3"), scores.FID, 318.16), (job("0.1"), scores.FID, 324.04), (job("0.2", "FAILED"), scores.FID, None),
             (job("0.5"), scores.PRECISION, 0.5)]
    assert pictures.tile_labels(summary, tiles) == [
        "dropout=0.3\nfid 318.2", "dropout=0.1\nfid 324.0", "dropout=0.2 (FAILED)", "dropout=0.5\nprecision 0.500"]


def test_the_description_is_a_linked_table_best_first(sweep):
    _, _, parent, children = sweep
    description = parent.data.tags[tracking.NOTE_TAG]
    assert f"`{scores.FID}` (lower is better)" in description
    column = scores.format_column(scores.FID, [child.data.metrics[scores.FID] for child in children])
    assert f"({scores.FID} {column[0]})" in description.splitlines()[0]  # the best line prints it as its table does
    table = [line for line in description.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(children)
    assert re.fullmatch(r"\|[-:|]+\|", table[1])  # the alignment row
    assert len({len(line) for line in table}) == 1  # padded: the source reads as a table too
    rows = table[2:]
    for row, child in zip(rows, children):  # best (lowest fid) first, each linked to its run
        assert f"({tracking.run_link(child.info.experiment_id, child.info.run_id)})" in row
        assert f"dropout={child.data.params['dropout']}" in row
    assert sweep_report.BEST_MARK in rows[0] and not any(sweep_report.BEST_MARK in row for row in rows[1:])
    # the final montage, whole in the parent's Artifacts tab, a link away
    montage = tracking.run_link(parent.info.experiment_id, parent.info.run_id, f"{SUMMARY}/{sweep_report.MONTAGE}")
    assert f"[every job's samples]({montage})" in description.split("\n")[0]
    links = re.findall(r"\]\(([^)]*)\)", description)
    assert links and all(link.endswith(f"?{tracking.ML_VIEW}") or f"&{tracking.ML_VIEW}" in link for link in links)
    fids = [cell.strip() for cell in (row.split("|")[2].replace(sweep_report.UI_GAP, "") for row in rows)]
    assert len({len(value.split(".")[-1]) for value in fids}) == 1  # one number of decimals in a column


def test_the_runs_view_shows_the_children_best_first(sweep):
    cwd, result, parent, children = sweep
    client = store_client(cwd)
    experiment = client.get_experiment(parent.info.experiment_id)
    key = sweep_report.view_key(parent.info.run_id)
    state = json.loads(experiment.tags[tracking.SHARED_VIEW_TAG + key])
    assert state["orderByKey"] == f"metrics.`{scores.FID}`" and state["orderByAsc"] is True
    assert state["selectedColumns"] == [f"metrics.`{scores.FID}`", "params.`dropout`", "params.`seed`"]
    # the UI sends the view's filter and order to the store as they are: the store's answer is the table
    shown = client.search_runs([parent.info.experiment_id], filter_string=state["searchFilter"],
                               order_by=[state["orderByKey"] + (" ASC" if state["orderByAsc"] else " DESC")])
    assert [run.info.run_id for run in shown] == [child.info.run_id for child in children]
    assert tracking.view_link(parent.info.experiment_id, key) in parent.data.tags[tracking.NOTE_TAG]
    url = f"http://127.0.0.1:{tracking.UI_PORT}/{tracking.view_link(parent.info.experiment_id, key)}"
    assert f"runs table, best first: {url}" in result.stdout.splitlines()  # the sweep's last lines print it


def test_the_summary_is_kept_in_the_sweep_folder_too(sweep):
    _, _, parent, _ = sweep
    folder = Path(parent.data.tags["sweep.dir"]) / SUMMARY
    assert {"sweep_summary.csv", "sweep_summary.md", sweep_report.MONTAGE} <= {path.name for path in folder.iterdir()}
    table = (folder / "sweep_summary.md").read_text().splitlines()
    assert len({len(line) for line in table}) == 1 and table[0].startswith("| dropout")


def test_run_names_are_short_and_say_what_differs():
    name = tracking.run_name(["epochs=2", "steps_per_epoch=60", "eval.every=1", "dropout=0.5", "label_smoothing=0.2",
                              "optimizer.lr=0.0001", "model=dcgan", "loss=hinge", "data.path=/some/where.npz"])
    assert len(name) <= tracking.RUN_NAME_LENGTH and "~" not in name
    assert name.startswith("dropout=0.5 ls=0.2 lr=0.0001")  # what changes the model first
    assert re.fullmatch(r"[^ ]+=[^ ]+( [^ ]+=[^ ]+)* \+\d+", name)  # whole parts, then how many were left out
    only_length = ["epochs=2", "steps_per_epoch=60", "eval.every=1"]
    assert tracking.run_name(only_length) == "epochs=2 steps_per_epoch=60 eval.every=1"  # 40: all of it
    assert tracking.run_name(["dropout=0.10", "label_smoothing=0", "seed=1"], keys=["dropout", "label_smoothing"]) == \
        "dropout=0.1 ls=0"


def test_the_children_are_named_within_the_limit(sweep):
    _, _, _, children = sweep
    assert sorted(child.info.run_name for child in children) == [
        f"dropout={dropout} seed={seed}" for dropout in ("0.1", "0.3") for seed in (0, 1)]


def test_the_ui_hint_runs_as_pasted_and_says_how_to_pick_another_port(tmp_path):
    uri = f"sqlite:///{tmp_path / 'a folder é' / 'mlflow.db'}"  # quoted, spaces and all
    lines = tracking.ui_hint(uri, "7", "abc", view_key="sweep-abc").splitlines()
    command = lines[0].removeprefix("look at it: ")
    words = shlex.split(command, comments=True)  # what a shell runs: the port hint is a comment
    assert words[1:] == ["ui", "--backend-store-uri", uri, "--port", str(tracking.UI_PORT), "--app-name", "ganlab"]
    assert words[0] in (str(Path(sys.executable).parent / "mlflow"), "mlflow")
    assert "--port N" in command.split("#", 1)[1]
    assert lines[1] == f"then open http://127.0.0.1:{tracking.UI_PORT}/#/experiments/7/runs/abc?{tracking.ML_VIEW}"
    assert lines[2].endswith(f"/#/experiments/7/runs?viewStateShareKey=sweep-abc&{tracking.ML_VIEW}")


def test_table_columns_keep_one_number_of_decimals():
    assert scores.format_column(scores.FID, [323.18, 12.5, None]) == ["323.2", "12.5", "-"]
    assert scores.format_column(scores.CLASSIFIER_SCORE, [1.0, 1.0009]) == ["1.000", "1.001"]
    assert scores.format_column(scores.PRECISION, [1, 0.25]) == ["1.000", "0.250"]  # a fixed format as it is
    table = sweep_report.markdown_table(["setting", "fid"], [["a", "1.0"], ["longer one", "12.5"]], right={1})
    assert table.splitlines() == ["| setting    |  fid |", "|------------|-----:|", "| a          |  1.0 |",
                                  "| longer one | 12.5 |"]


def test_a_description_longer_than_mlflow_keeps_is_cut_at_a_line_with_a_pointer():
    """A sweep of 80 jobs writes a description of ~21,000 characters; MLflow would keep its first 8,000 and warn."""
    from ganlab.core.markdown import cut

    rows = [f"| job {number} | {number}.5 |" for number in range(800)]
    text = "**Best job** ...\n\n" + "\n".join(rows)
    shown = cut(text, tracking.NOTE_LIMIT, "summary/sweep_summary.md")
    assert len(shown) <= tracking.NOTE_LIMIT and shown.startswith("**Best job**")
    kept, _, last = shown.rpartition("\n\n")
    assert kept.splitlines()[-1] in rows  # a whole row, never half of one
    assert last == "*(cut to 8,000 characters: all of it is in summary/sweep_summary.md)*"
    assert cut("short", tracking.NOTE_LIMIT, "x") == "short"

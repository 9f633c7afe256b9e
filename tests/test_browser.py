"""A run in MLflow's own UI, in a real headless Chromium (docs/screenshots.py drives it over the
DevTools protocol): the run's page shows its latest sample grid without a click. Also what the
store holds behind it: a grid at every epoch, scores at evaluated epochs only, every image also at
the step MLflow's image card opens on. Skipped where no Chromium is installed (Debian: chromium)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import QUICK, REPO, run_cli, store_client
from ganlab.training import epochs
from ganlab.core import scores
from ganlab.tracking import store as tracking
from test_mlflow_ui import logged_images

sys.path.insert(0, str(REPO / "docs"))
import screenshots  # noqa: E402  (docs/screenshots.py: the MLflow server and the DevTools client)

NEEDS_BROWSER = pytest.mark.skipif(
    screenshots.find_chromium() is None or importlib.util.find_spec("websocket") is None,
    reason="needs Chromium on PATH (Debian: apt-get install chromium) and websocket-client (pip)",
)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One job of two epochs, evaluated only at the last; default tracking settings."""
    cwd = tmp_path_factory.mktemp("browser_run")
    result = run_cli([*QUICK, "epochs=2", "eval.every=2"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    client = store_client(cwd)
    experiment_id = client.get_experiment_by_name("ganlab").experiment_id
    (run,) = client.search_runs([experiment_id])
    return cwd, client, experiment_id, run


def test_a_grid_every_epoch_scores_at_evaluated_epochs_and_no_system_metrics(single_run):
    _, client, _, run = single_run
    steps = {}
    for key, step, _ in logged_images(client, run.info.run_id):
        steps.setdefault(key, set()).add(step)
    assert steps["samples"] == {epochs.LATEST_STEP, 1, 2}  # a grid at every epoch
    assert steps["classes"] == {epochs.LATEST_STEP, 2}  # the classifier's pictures at evaluated epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, scores.FID)] == [2]
    assert not [name for name in run.data.metrics if name.startswith("system/")]  # off unless asked for


@NEEDS_BROWSER
def test_run_page_shows_the_latest_sample_grid_without_a_click(single_run, tmp_path):
    cwd, client, experiment_id, run = single_run
    newest = [path for key, step, path in logged_images(client, run.info.run_id)
              if key == "samples" and step == epochs.LATEST_STEP][-1]
    uri = tracking.default_tracking_uri(cwd)
    page = f"#/experiments/{experiment_id}/runs/{run.info.run_id}/model-metrics?workflowType=machine_learning"
    with screenshots.mlflow_server(uri, cwd) as base, screenshots.Browser(tmp_path / "chromium") as browser:
        browser.call("Page.navigate", url=f"{base}/{page}")
        shown = browser.shown_image("samples", timeout=60)
    assert shown["naturalWidth"] > 0
    # MLflow 3.17 prints the run's params above the picture and clips the rest: the grid starts in view
    assert shown["visible"] > 0, shown
    # the card shows the newest grid (the last epoch's), the compressed preview MLflow keeps beside it
    assert newest.removesuffix(".png") in shown["src"], shown["src"]

"""A run in MLflow's own UI, in a real headless Chromium (docs/screenshots.py drives it over the
DevTools protocol), at 1600 x 1000 with MLflow's Assistant panel open as a first visit opens it:
the URL a job prints shows its newest sample grid whole without a click or a scroll; its per-step
loss is a curve even after one epoch; the server as ganlab's printed command starts it opens the
experiment from MLflow's home page for model training, not GenAI, in a browser that never chose.
Also what the store holds behind it: a grid at every epoch, every image also at the step MLflow's
image card opens on, the experiment marked for model training.
Skipped where no Chromium is installed (Debian: chromium)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import QUICK, REPO, run_cli, store_client
from ganlab.training import epochs
from ganlab.core import scores
from ganlab.tracking import store as tracking
from ganlab.tracking import ui_app
from test_mlflow_ui import logged_images

sys.path.insert(0, str(REPO / "docs"))
import screenshots  # noqa: E402  (docs/screenshots.py: the MLflow server and the DevTools client)

NEEDS_BROWSER = pytest.mark.skipif(
    screenshots.find_chromium() is None or importlib.util.find_spec("websocket") is None,
    reason="needs Chromium on PATH (Debian: apt-get install chromium) and websocket-client (pip)",
)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One job of one epoch (5 steps); default tracking settings."""
    cwd = tmp_path_factory.mktemp("browser_run")
    result = run_cli(QUICK, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    client = store_client(cwd)
    experiment_id = client.get_experiment_by_name("ganlab").experiment_id
    (run,) = client.search_runs([experiment_id])
    (printed,) = [line.split("then open ", 1)[1] for line in result.stdout.splitlines() if "then open " in line]
    return cwd, client, experiment_id, run, printed


@pytest.fixture(scope="module")
def ui(single_run, tmp_path_factory):
    """An MLflow server on the run's store and a fresh Chromium (a first visit: the Assistant panel opens), shared."""
    cwd = single_run[0]
    with screenshots.mlflow_server(tracking.default_tracking_uri(cwd), cwd) as base, \
            screenshots.Browser(tmp_path_factory.mktemp("chromium") / "profile") as browser:
        yield base, browser


def test_the_store_behind_the_page(single_run):
    _, client, experiment_id, run, printed = single_run
    steps = {}
    for key, step, _ in logged_images(client, run.info.run_id):
        steps.setdefault(key, set()).add(step)
    assert steps["samples"] == steps["classes"] == {epochs.LATEST_STEP, 1}
    assert not [name for name in run.data.metrics if name.startswith("system/")]  # off unless asked for
    losses = client.get_metric_history(run.info.run_id, epochs.D_LOSS_STEP)
    assert [point.step for point in losses] == [1, 2, 3, 4, 5]  # the global steps of the one epoch
    assert [point.step for point in client.get_metric_history(run.info.run_id, scores.D_LOSS)] == [1]  # the mean
    kind = client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG]
    assert kind == tracking.MODEL_TRAINING[tracking.EXPERIMENT_KIND_TAG]
    assert printed.endswith(f"/runs/{run.info.run_id}/artifacts/samples/epoch_001.png?{tracking.ML_VIEW}")


GRID_IN_VIEW = """(() => {
  // the artifact view draws the file from a blob: URL; the page's only large picture is the grid
  const image = [...document.querySelectorAll('img')].find(i => i.complete && i.naturalWidth >= 280);
  if (!image) return null;
  const box = image.getBoundingClientRect();
  return {top: box.top, left: box.left, bottom: box.bottom, right: box.right, width: box.width,
          natural: image.naturalWidth, innerWidth: innerWidth, innerHeight: innerHeight,
          assistant: document.body.innerText.includes('MLflow Assistant')};
})()"""


@NEEDS_BROWSER
def test_the_printed_url_shows_the_newest_grid_whole_with_the_assistant_open(single_run, ui):
    printed, (base, browser) = single_run[4], ui
    browser.call("Page.navigate", url=printed.replace(f"http://127.0.0.1:{tracking.UI_PORT}", base))
    browser.wait(GRID_IN_VIEW, timeout=90)  # the picture has loaded: nothing is clicked or scrolled
    shown = browser.js(GRID_IN_VIEW)
    assert shown["assistant"], "MLflow's Assistant panel is open, as on a first visit"
    assert shown["natural"] == 600 and shown["width"] >= 280, shown  # the titled grid, at least at the grid's own size
    assert 0 <= shown["top"] and shown["bottom"] <= shown["innerHeight"], shown  # whole, in the window
    assert 0 <= shown["left"] and shown["right"] <= shown["innerWidth"], shown


LOSS_POINTS = """(() => {
  const card = [...document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]')]
    .find(card => card.innerText.split('\\n')[0].trim() === 'KEY');
  if (!card) return null;
  card.scrollIntoView({block: 'center'});
  const line = card.querySelector('path.js-line');
  return line ? (line.getAttribute('d').match(/[ML]/g) || []).length : null;
})()"""


@NEEDS_BROWSER
def test_a_one_epoch_run_has_a_loss_curve(single_run, ui):
    _, _, experiment_id, run, _ = single_run
    (base, browser) = ui
    page = f"#/experiments/{experiment_id}/runs/{run.info.run_id}/model-metrics?{tracking.ML_VIEW}"
    points = LOSS_POINTS.replace("KEY", epochs.D_LOSS_STEP)
    browser.call("Page.navigate", url=f"{base}/{page}")
    browser.wait(f"{points} > 1", timeout=90)
    assert browser.js(points) > 1  # a curve over the epoch's steps, not the one point of its mean


@NEEDS_BROWSER
def test_the_home_pages_experiment_link_opens_model_training_on_a_first_visit(single_run, ui, tmp_path):
    """`mlflow ui --app-name ganlab` (the printed command) in a fresh profile: MLflow's own switch would open GenAI."""
    run, base = single_run[3], ui[0]
    with screenshots.Browser(tmp_path / "profile") as browser:
        browser.open(f"{base}/", until_text="Recent Experiments")
        browser.click(screenshots.EXPERIMENT_LINK)
        browser.wait(f"document.body.innerText.includes({json.dumps(run.info.run_name)}) || {screenshots.GENAI_PAGE}")
        assert not browser.js(screenshots.GENAI_PAGE), browser.js("location.href")
        assert browser.js("location.hash").startswith("#/experiments/") and "/runs" in browser.js("location.hash")
        # the browser's switch, which MLflow's own links (e.g. a parent's "Child runs") follow, is on model training
        switch = browser.js(f"localStorage.getItem({json.dumps(ui_app.SWITCH_KEY)})")
        assert json.loads(switch) == ui_app.MODEL_TRAINING_VIEW

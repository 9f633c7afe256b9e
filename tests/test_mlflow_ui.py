"""What the MLflow UI shows of a sweep, read back through MLflow's own client after one real
sweep through the CLI: images per epoch, params, run names, the parent's summary, dataset
inputs, logged and registered generators, system metrics and the printed UI links."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURE_MNIST, REGISTERED_MODEL as REGISTERED, artifact_paths, store_client
from ganlab.training import epochs
from ganlab.core import scores


@pytest.fixture(scope="module")
def sweep(dropout_sweep):
    """conftest's shared sweep: four jobs (two settings, two seeds) of two epochs, both evaluated; system metrics
    switched on, sampled every second; the generators registered as REGISTERED."""
    return dropout_sweep.cwd, dropout_sweep.result


def parent_and_children(cwd):
    client = store_client(cwd)
    runs = client.search_runs([client.get_experiment_by_name("ganlab").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    children = sorted((run for run in runs if run is not parents[0]),
                      key=lambda run: (run.data.params["dropout"], run.data.params["seed"]))
    assert len(children) == 4
    return client, parents[0], children


def logged_images(client, run_id: str) -> list[tuple[str, int, str]]:
    """(key, step, path) of a run's MLflow images, in the order the UI lists them (by path: by
    timestamp within a key and step). log_image(key=..., step=...) stores
    images/<key>+step+<step>+timestamp+<t>+<uuid>.png (and a .webp preview)."""
    pngs = sorted(path for path in artifact_paths(client, run_id, "images") if path.endswith(".png"))
    return [(path.removeprefix("images/").split("+")[0], int(path.split("+")[2]), path) for path in pngs]


def test_every_child_logs_its_samples_classes_and_nearest_training_images_at_each_epoch(sweep):
    client, _, children = parent_and_children(sweep[0])
    keys = ("samples", "classes", "nearest_training")
    for child in children:
        logged = logged_images(client, child.info.run_id)
        assert {(key, step) for key, step, _ in logged} == {(key, step) for key in keys
                                                             for step in (epochs.LATEST_STEP, 1, 2)}
        assert child.data.tags["mlflow.loggedImages"] == "True"  # what makes the UI offer image charts
        for key in keys:  # the step the UI's card opens on holds every epoch's picture, the newest last
            at_latest = [path for name, step, path in logged if name == key and step == epochs.LATEST_STEP]
            by_epoch = [next(path for name, step, path in logged if name == key and step == epoch) for epoch in (1, 2)]
            assert len(at_latest) == 2
            assert all(same_image(client, child.info.run_id, *pair, sweep[0]) for pair in zip(at_latest, by_epoch))
        grid = next(path for key, step, path in logged if key == "samples" and step == 2)
        with Image.open(client.download_artifacts(child.info.run_id, grid, str(sweep[0]))) as picture:
            assert picture.size[0] == 600 and picture.size[1] > 600  # the 10x10 grid at 2x, under its title
        local = child.data.tags["output_dir"] + "/samples/epoch_002.png"  # the same titled picture as the job's file
        with Image.open(local) as picture:
            assert picture.size[0] == 600


def same_image(client, run_id: str, first: str, second: str, folder) -> bool:
    pictures = []
    for path in (first, second):
        with Image.open(client.download_artifacts(run_id, path, str(folder))) as picture:
            pictures.append(np.asarray(picture))
    return pictures[0].shape == pictures[1].shape and bool(np.array_equal(*pictures))


def test_every_knob_is_one_param_with_a_value(sweep):
    _, _, children = parent_and_children(sweep[0])
    assert [child.data.params["dropout"] for child in children] == ["0.1", "0.1", "0.3", "0.3"]
    for child in children:
        params = child.data.params
        top_level = {key for key in params if "." not in key}
        assert [key for key in params if "." in key and key.rsplit(".", 1)[1] in top_level] == []  # no model.dropout
        assert [key for key in params if scores.is_known(key.rsplit(".", 1)[-1])] == []  # no param named like a score
        assert "None" not in params.values()


def test_children_are_named_by_their_swept_value(sweep):
    _, _, children = parent_and_children(sweep[0])
    names = [child.info.run_name for child in children]
    assert names == ["dropout=0.1 seed=0", "dropout=0.1 seed=1", "dropout=0.3 seed=0", "dropout=0.3 seed=1"]
    assert all(len(name) <= 40 for name in names)


def test_parent_names_the_best_job_without_posing_as_one(sweep):
    _, parent, children = parent_and_children(sweep[0])
    best = min(children, key=lambda child: child.data.metrics[scores.FID])
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert float(parent.data.tags[f"best.{scores.FID}"]) == best.data.metrics[scores.FID]
    # its own metrics and params (`sweep.best.*`, `sweep.swept.*`, `sweep.fixed.*`) are no job's: it never sorts
    # among its children as a run
    assert parent.data.metrics and not any(scores.is_known(name) for name in parent.data.metrics)
    assert parent.data.params and not set(parent.data.params) & set(best.data.params)
    description = parent.data.tags["mlflow.note.content"]
    assert f"/runs/{best.info.run_id}?workflowType=machine_learning" in description
    assert "dropout" in description


def test_parent_logs_the_montage_of_every_epoch_and_the_last_where_the_ui_opens(sweep):
    client, parent, _ = parent_and_children(sweep[0])
    steps = [step for key, step, _ in logged_images(client, parent.info.run_id) if key == "samples"]
    assert sorted(steps) == [epochs.LATEST_STEP, 1, 2]  # step 0: the final montage, where the image card opens


def test_every_child_records_its_training_data_and_source(sweep):
    client, _, children = parent_and_children(sweep[0])
    for child in children:
        inputs = client.get_run(child.info.run_id).inputs.dataset_inputs
        assert len(inputs) == 1
        dataset = inputs[0].dataset
        assert dataset.name == "mnist"
        assert len(dataset.digest) >= 8 and child.data.tags["data.sha256"].startswith(dataset.digest)
        assert json.loads(dataset.source) == {"uri": str(FIXTURE_MNIST.resolve())}
        assert [(tag.key, tag.value) for tag in inputs[0].tags] == [("mlflow.data.context", "training")]
        assert child.data.tags["mlflow.source.name"] == "ganlab.train"


def test_logged_generator_turns_noise_into_images(sweep, monkeypatch):
    import keras
    import mlflow

    client, _, children = parent_and_children(sweep[0])
    child = children[0]
    models = {client.get_logged_model(output.model_id).name: output.model_id
              for output in client.get_run(child.info.run_id).outputs.model_outputs}
    assert set(models) == {"generator", "generator_best"}  # eval every epoch: the best epoch's G is kept too
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # for models:/ URIs
    generator = mlflow.pyfunc.load_model(f"models:/{models['generator']}")
    assert generator.metadata.get_input_schema().inputs[0].shape == (-1, 100)
    noise = np.random.default_rng(0).standard_normal((4, 100)).astype(np.float32)
    images = generator.predict(noise)
    assert images.shape == (4, 784) and images.dtype == np.float32
    assert np.all(np.abs(images) <= 1.0)
    kept = keras.models.load_model(f"{child.data.tags['output_dir']}/models/generator.keras")
    np.testing.assert_allclose(images, kept.predict(noise, verbose=0), atol=1e-6)  # the final G, as saved


def test_final_generators_are_registered_under_the_configured_name(sweep):
    client, _, children = parent_and_children(sweep[0])
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    assert sorted(version.run_id for version in versions) == sorted(child.info.run_id for child in children)
    for version in versions:
        model_id = version.source.removeprefix("models:/")
        assert client.get_logged_model(model_id).name == "generator"


def test_every_child_logs_system_metrics(sweep):
    _, _, children = parent_and_children(sweep[0])
    for child in children:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(child.data.metrics)


def test_printed_links_open_the_runs_view_of_the_ui(sweep):
    links = [line.split("then open ", 1)[1] for line in sweep[1].stdout.splitlines() if "then open " in line]
    assert len(links) == 5  # four jobs and the sweep
    assert all(link.startswith("http://127.0.0.1:5000/#/experiments/") and link.endswith("?workflowType=machine_learning")
               for link in links)


def test_every_job_of_a_sweep_has_its_own_colour_in_the_ui(sweep):
    from ganlab.tracking import job_run

    _, _, children = parent_and_children(sweep[0])
    colours = {child.data.tags[job_run.RUN_COLOR_TAG] for child in children}  # the UI's charts read this tag
    assert len(colours) == len(children) and colours <= set(job_run.RUN_COLORS)


def test_ganlabs_ui_app_sets_the_switch_before_mlflows_page_code_runs():
    """`mlflow ui --app-name ganlab` serves this MLflow's own index.html with the switch-setting line first
    (tests/test_browser.py clicks through it); a page it does not know is left to MLflow, unchanged."""
    from pathlib import Path

    import mlflow.server
    from ganlab.tracking import ui_app

    mlflow_page = (Path(mlflow.server.app.static_folder) / "index.html").read_text()
    page = ui_app.page_for_model_training(mlflow_page)
    assert page is not None and page.replace(ui_app.SET_MODEL_TRAINING_ONCE, "", 1) == mlflow_page
    assert page.index(ui_app.SET_MODEL_TRAINING_ONCE) < page.index("<script defer")  # before MLflow's own code
    assert ui_app.page_for_model_training("<html><body></body></html>") is None

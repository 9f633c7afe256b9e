"""One home per piece of knowledge: the score registry, one name per knob, Hydra at the edge,
readers that never create, and the best job, the best epoch and the seed comparison read it."""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from conftest import QUICK, REPO, all_runs, artifact_paths, new_store, run_cli, store_client
from ganlab import report
from ganlab.core import scores

MODULES = sorted((REPO / "ganlab").rglob("*.py"))


def wing_path(module: Path) -> str:
    """A module's path inside the package, e.g. core/scores.py."""
    return module.relative_to(REPO / "ganlab").as_posix()


# ---------------------------------------------------------------------------- one home


def string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


# A string equal to a score's name that means something else: the record's dtype column
# (its old name, which record.py renames on reading).
NOT_A_SCORE = {("core/record.py", "precision")}  # the old name of the record's dtype column, still read


def test_only_the_registry_spells_a_score_name():
    spelled = {name: [wing_path(m) for m in MODULES if name in string_literals(m) and (wing_path(m), name) not in NOT_A_SCORE]
               for name in scores.SCORE_NAMES}
    assert all(modules == ["core/scores.py"] for modules in spelled.values()), spelled


def test_hydra_is_imported_only_at_the_entry_points():
    importing = []
    for module in MODULES:
        tree = ast.parse(module.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        if any(name == "hydra" or name.startswith("hydra.") for name in names):
            importing.append(wing_path(module))
    # Where Hydra calls ganlab: the entry point (and its misspelt-knob check, which composes the config before
    # Hydra runs), the sweep callback (and its pre-check, which composes every job's config as the launcher will),
    # the SLURM launcher, and the sweepers' parsing of Hydra's sweep syntax.
    edge = {"train.py", "core/knob_names.py", "sweeps/sweep.py", "sweeps/precheck.py", "sweeps/slurm.py",
            "sweeps/search.py", "sweeps/settle_plan.py"}
    assert set(importing) <= edge, importing


def test_readme_scores_table_is_the_registry():
    docs = (REPO / "docs" / "evaluation.md").read_text()
    assert scores.markdown_table() in docs


@pytest.mark.parametrize("name", scores.objective_names())
def test_the_best_job_follows_the_metric_direction(name):
    """A sweep's best pick takes the highest value of a higher-is-better score, the lowest otherwise."""
    values = [3.0, 7.0, 5.0]
    children = [SimpleNamespace(info=SimpleNamespace(status="FINISHED", run_id=str(i)), data=SimpleNamespace(metrics={name: v}))
                for i, v in enumerate(values)]
    children.append(SimpleNamespace(info=SimpleNamespace(status="FINISHED", run_id="nan"), data=SimpleNamespace(metrics={name: math.nan})))
    best = scores.pick_best(name, children, lambda child: child.data.metrics.get(name))
    expected = "1" if scores.direction(name) == scores.HIGHER else "0"
    assert best.info.run_id == expected


@pytest.mark.parametrize("name", ["kid_std", "density", "d_real", "fid_best_epoch", "ema_density"])
def test_a_metric_without_a_direction_is_refused_by_name_not_taken_as_lower_is_better(name):
    assert scores.direction(name) is None
    with pytest.raises(ValueError, match=f"metric '{name}' has no better direction"):
        scores.is_better(name, 1.0, 2.0)
    with pytest.raises(ValueError, match=f"metric '{name}' has no better direction"):
        scores.pick_best(name, [1.0, 2.0], float)
    with pytest.raises(ValueError, match=f"metric '{name}' has no better direction"):
        scores.pick_best(name, [], float)  # refused even with nothing to compare
    with pytest.raises(ValueError, match="unknown metric 'foo'; valid: fid, fid_logits"):
        scores.is_better("foo", 1.0, 2.0)


def test_optunas_direction_is_the_registrys():
    assert {scores.optuna_direction(name) for name in scores.objective_names() if scores.direction(name) == scores.HIGHER} == {"maximize"}
    assert {scores.optuna_direction(name) for name in scores.objective_names() if scores.direction(name) == scores.LOWER} == {"minimize"}
    assert scores.optuna_direction(scores.best(scores.CLASSIFIER_SCORE)) == "maximize"
    with pytest.raises(ValueError, match="objective is null"):
        scores.optuna_direction(None)


def test_each_name_constant_is_its_registry_entry():
    """Code names metrics through constants: each is the name of the entry it stands for, whatever the order."""
    constants = {value for key, value in vars(scores).items() if key.isupper() and isinstance(value, str)}
    assert set(scores.REGISTRY) <= constants
    assert scores.FID == "fid" and scores.KL_UNIFORM == "kl_uniform" and scores.D_LOSS == "d_loss"


def test_derived_names_inherit_their_direction():
    assert scores.direction("ema_classifier_score") == scores.HIGHER
    assert scores.direction("rescore_fid") == scores.LOWER and scores.direction("recall_best") == scores.HIGHER
    assert scores.is_known("fid_best_epoch") and not scores.is_known("foo")
    with pytest.raises(ValueError, match="unknown metric foo; valid: fid, fid_logits"):
        scores.check_names(["fid", "foo"], "--metrics")


def test_determinism_can_be_turned_off_again_in_the_same_process():
    from ganlab.core.runtime import configure_tensorflow, op_determinism_enabled

    configure_tensorflow(0, None, deterministic=True)
    assert op_determinism_enabled()
    configure_tensorflow(0, None, deterministic=False)
    assert not op_determinism_enabled()
    configure_tensorflow(0, None, deterministic=True)


# ---------------------------------------------------------------------------- through the CLI


def test_a_second_name_for_a_knob_exits_before_keras(workdir):
    result = run_cli([*QUICK, "model.dropout=1.5"], workdir)
    assert result.returncode != 0 and "model.dropout" in result.stderr
    assert all_runs(workdir) == []


def test_fashion_mnist_is_not_scored_with_the_digit_classifier(workdir):
    result = run_cli([*QUICK, "data=fashion_mnist"], workdir, tell_if_tensorflow_loaded=True)  # the fixture's bytes
    assert result.returncode != 0 and result.stdout.splitlines()[-1] == "tensorflow loaded: False"
    assert "was trained on mnist, but the job's data is fashion_mnist" in result.stderr
    assert "python -m ganlab.classifier --dataset fashion_mnist" in result.stderr
    assert result.stderr.count("was trained on mnist") == 1  # printed once
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED" and "d_loss" not in run.data.metrics


# ---------------------------------------------------------------------------- over seeds: conftest's shared sweep
# (dropout=0.1,0.3 x seed=0,1, an EMA, every epoch scored); a higher-is-better objective end to end:
# test_sweep.py::test_four_parallel_jobs_and_another_sweep_at_once_into_one_fresh_store_each_job_with_every_epoch.


def test_the_best_job_is_tagged_and_its_setting_gets_the_mean_of_its_seeds_and_its_interval(dropout_sweep):
    _, result, parent, children = dropout_sweep
    best = min(children, key=lambda child: child.data.metrics[scores.FID])
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert float(parent.data.tags[f"best.{scores.FID}"]) == best.data.metrics[scores.FID]
    assert "dropout" not in parent.data.params and not any(scores.is_known(name) for name in parent.data.metrics)
    # its own metrics: the best setting's mean over its two seeds and that mean's 95% interval
    setting = [child.data.metrics[scores.FID] for child in children
               if child.data.params["dropout"] == best.data.params["dropout"]]
    low, mean, high = (parent.data.metrics[scores.sweep_best(scores.FID, bound)]
                       for bound in (scores.INTERVAL_BOUNDS[0], None, scores.INTERVAL_BOUNDS[1]))
    assert len(setting) == 2 and mean == pytest.approx(sum(setting) / len(setting)) and low < mean < high
    assert best.info.run_id in parent.data.tags["mlflow.note.content"]
    assert "mlflow ui --backend-store-uri" in result.stdout and parent.info.run_id in result.stdout


def test_every_run_tracks_its_best_epoch_and_ema_scores(dropout_sweep):
    client = store_client(dropout_sweep.cwd)
    for child in dropout_sweep.children:
        history = {p.step: p.value for p in client.get_metric_history(child.info.run_id, scores.FID)}
        best = {p.step: p.value for p in client.get_metric_history(child.info.run_id, scores.best(scores.FID))}
        best_epoch = {p.step: p.value for p in client.get_metric_history(child.info.run_id, scores.best_epoch(scores.FID))}
        assert best[2] == min(history.values()) and history[int(best_epoch[2])] == best[2]  # fid: lower is better
        assert [p.step for p in client.get_metric_history(child.info.run_id, "ema_fid")] == [1, 2]
        assert {"models/generator_best.keras", "models/generator_ema.keras"} <= artifact_paths(client, child.info.run_id)
        assert child.data.params["ema"] == "0.99" and len(child.info.run_name) <= 40
        assert child.info.run_name.startswith("dropout=") and "seed=" in child.info.run_name


def test_a_sweep_over_seeds_and_a_knob_compares_the_groups(dropout_sweep, tmp_path):
    cwd, _, parent, children = dropout_sweep
    client = store_client(cwd)
    assert {"summary/comparison.csv", "summary/comparison.md", "summary/comparison_fid.png",
            "summary/runs.csv"} <= artifact_paths(client, parent.info.run_id)
    table = client.download_artifacts(parent.info.run_id, "summary/comparison.csv", str(tmp_path))
    with open(table) as stream:
        rows = [row for row in csv.DictReader(stream) if row["metric"] == "fid" and row["epoch"] == "2"]
    by_group = {row["group"]: row for row in rows}
    assert set(by_group) == {"dropout=0.1", "dropout=0.3"} and by_group["dropout=0.3"]["diff"] == ""  # the reference
    values = {g: [c.data.metrics["fid"] for c in children if f"dropout={c.data.params['dropout']}" == g] for g in by_group}
    assert float(by_group["dropout=0.1"]["mean"]) == pytest.approx(np.mean(values["dropout=0.1"]))
    assert float(by_group["dropout=0.1"]["diff"]) == pytest.approx(np.mean(values["dropout=0.1"]) - np.mean(values["dropout=0.3"]))
    assert "dropout" in parent.data.tags["mlflow.note.content"].split("Across seeds")[1]


# ---------------------------------------------------------------------------- the report


def synthetic_sweep(tmp_path: Path, values: dict[str, list[float]]):
    """A store with a parent and one child per (dropout, seed), fid logged at epoch 5 with known values."""
    from mlflow.tracking import MlflowClient

    uri = new_store(tmp_path / "mlruns" / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={"sweep.parent": "true"}).info.run_id
    for dropout, fids in values.items():
        for seed, fid in enumerate(fids):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "sweep.job_num": str(len(fids) * 10 + seed)})
            for key, value in {"dropout": dropout, "seed": seed, "label_smoothing": 0.1}.items():
                client.log_param(run.info.run_id, key, value)
            client.log_metric(run.info.run_id, "fid", fid, step=5)
            client.set_terminated(run.info.run_id)
    client.set_terminated(parent)
    return uri


def test_report_compares_groups_against_scipy(tmp_path, capsys):
    values = {"0.3": [60.0, 64.0, 59.0], "0.5": [50.0, 55.0, 52.0, 49.0], "0.0": [61.0, 70.0, 65.0]}
    uri = synthetic_sweep(tmp_path, values)
    out = tmp_path / "report"
    code = report.main(["--tracking-uri", uri, "--experiment", "study", "--by", "dropout", "--metrics", "fid",
                        "--epochs", "5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with open(out / "comparison.csv") as stream:
        header = stream.readline().strip()
        rows = {row["group"]: row for row in csv.DictReader([header, *stream])}
    assert header == "group,metric,epoch,n,mean,std,ci_low,ci_high,diff,diff_ci_low,diff_ci_high,p_value,seeds_needed,q_value"
    reference, other = np.array(values["0.3"]), np.array(values["0.5"])
    low, high = scipy.stats.t.interval(0.95, len(other) - 1, loc=other.mean(), scale=scipy.stats.sem(other))
    row = rows["dropout=0.5"]
    assert float(row["mean"]) == pytest.approx(other.mean()) and float(row["std"]) == pytest.approx(other.std(ddof=1))
    assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((low, high))
    assert float(row["diff"]) == pytest.approx(other.mean() - reference.mean())
    assert float(row["p_value"]) == pytest.approx(scipy.stats.ttest_ind(other, reference, equal_var=False).pvalue)
    assert rows["dropout=0.3"]["diff"] == "" and rows["dropout=0.3"]["p_value"] == ""  # the tutorial's 0.3 is the reference
    assert (out / "comparison_fid.png").read_bytes()[:4] == b"\x89PNG"
    assert "clear" in (out / "comparison.md").read_text()


def test_a_report_is_computed_again_from_its_record_alone(tmp_path, capsys):
    uri = synthetic_sweep(tmp_path, {"0.3": [60.0, 64.0, 59.0], "0.5": [50.0, 55.1, 52.0]})
    first, again = tmp_path / "report", tmp_path / "again"
    assert report.main(["--tracking-uri", uri, "--experiment", "study", "--by", "dropout", "--out", str(first)]) == 0
    record = first / "runs.csv"
    header, *lines = record.read_text().splitlines()
    assert header == "dropout,seed,epoch,metric,value"
    assert sorted(lines) == sorted(["0.3,0,5,fid,60.0", "0.3,1,5,fid,64.0", "0.3,2,5,fid,59.0",
                                    "0.5,0,5,fid,50.0", "0.5,1,5,fid,55.1", "0.5,2,5,fid,52.0"])
    assert report.main(["--record", str(record), "--out", str(again)]) == 0, capsys.readouterr().err
    assert (again / "comparison.csv").read_bytes() == (first / "comparison.csv").read_bytes()
    assert (again / "comparison.md").read_text() == (first / "comparison.md").read_text()
    assert not (again / "runs.csv").exists()  # the record is read, never written again
    capsys.readouterr()
    assert report.main(["--record", str(record), "--by", "lr", "--out", str(again)]) == 2
    assert f"--by: lr is not a column of {record}; its grouping keys are: dropout." in capsys.readouterr().err
    assert report.main(["--record", str(tmp_path / "none.csv"), "--out", str(again)]) == 2
    assert "--record: no file" in capsys.readouterr().err


def test_report_refuses_unknown_metrics_and_experiments_and_creates_nothing(tmp_path, capsys):
    uri = synthetic_sweep(tmp_path, {"0.3": [1.0, 2.0]})
    assert report.main(["--tracking-uri", uri, "--experiment", "study", "--metrics", "foo,fid", "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert "--metrics: unknown metric foo; valid: fid," in error and "classifier_score" in error
    assert report.main(["--tracking-uri", uri, "--experiment", "stdy", "--out", str(tmp_path / "r")]) == 2
    assert "no experiment 'stdy'" in capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_experiment_by_name("stdy") is None
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    assert report.main(["--tracking-uri", missing, "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "nowhere").exists()


def test_the_montage_names_each_tile_once_inside_the_picture(tmp_path):
    from ganlab.core import plots

    grids = [plots.save_sample_grid(np.zeros((100, 784)), tmp_path / f"{i}.png") for i in range(3)]
    path = plots.save_montage(grids, ["dropout=0.1 ls=0", "dropout=0.3 ls=0", "dropout=0.5 ls=0"], tmp_path / "m.png",
                              title="final samples (epoch 2)")
    image = __import__("matplotlib.pyplot", fromlist=["imread"]).imread(path)
    assert (image[0, :, :3] == 1.0).all() and (image[:, 0, :3] == 1.0).all()  # a white margin: nothing cut at the edges
    assert scores.format_column("fid", [12.3456]) == ["12.35"]

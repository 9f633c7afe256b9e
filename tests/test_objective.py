"""The sweep's objective: the best job follows `objective_at`, Optuna's direction follows the
score registry, and a montage that leaves a job out says which artifact and why."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import QUICK, REPO, all_runs, run_cli
from ganlab.core import plots
from ganlab.core import scores
from ganlab.sweeps import sweep
from ganlab.sweeps import summary as sweep_report  # sweep registers the ${ganlab.direction:...} resolver

FID, FID_BEST = scores.FID, scores.best(scores.FID)


def child(run_id: str, metrics: dict, params: dict | None = None, status: str = "FINISHED", job: int = 0):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, status=status, experiment_id="1"),
        data=SimpleNamespace(metrics=metrics, params={"dropout": run_id, **(params or {})},
                             tags={"sweep.job_num": str(job)}),
    )


# The final fid and the best fid disagree on which job is best.
FINAL_WINS = {FID: 10.0, FID_BEST: 9.0}
BEST_WINS = {FID: 12.0, FID_BEST: 5.0}


# ---------------------------------------------------------------------------- the best job


@pytest.mark.parametrize("objective_at, expected", [("best", "b"), ("final", "a")])
def test_the_best_job_is_chosen_on_what_each_job_returned(objective_at, expected):
    children = [child("a", FINAL_WINS, {"objective_at": objective_at}),
                child("b", BEST_WINS, {"objective_at": objective_at})]
    assert sweep_report.best_job(children, FID).info.run_id == expected
    assert sweep_report.returned_metric(children[0], FID) == (FID_BEST if objective_at == "best" else FID)


def test_a_job_without_the_param_follows_the_sweeps_objective_at():
    children = [child("a", FINAL_WINS), child("b", BEST_WINS)]
    assert sweep_report.best_job(children, FID, objective_at="best").info.run_id == "b"
    assert sweep_report.best_job(children, FID, objective_at="final").info.run_id == "a"
    assert sweep_report.best_job(children, FID).info.run_id == "a"  # the default, as in conf/train.yaml


def test_a_job_with_no_best_value_returned_its_final_one():
    """epochs=0 evaluates only the untrained nets: such a job returns its final value even with objective_at=best."""
    children = [child("a", {FID: 7.0}, {"objective_at": "best"}), child("b", BEST_WINS, {"objective_at": "best"})]
    assert sweep_report.returned_metric(children[0], FID) == FID
    assert sweep_report.best_job(children, FID).info.run_id == "b"
    children[1].data.metrics = {FID: 12.0, FID_BEST: 8.0}
    assert sweep_report.best_job(children, FID).info.run_id == "a"


class FakeClient:
    """The two MLflow calls summarize and log_on_parent make; `grids` maps run id -> PNG to 'download'."""

    def __init__(self, grids: dict[str, Path]):
        self.grids, self.logged = grids, []

    def download_artifacts(self, run_id, path, folder):
        if run_id not in self.grids:
            raise OSError(f"No such file or directory: '{path}'")
        return shutil.copy(self.grids[run_id], Path(folder) / path)

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.logged.append((run_id, list(metrics), list(params), list(tags)))


def test_a_sweep_with_objective_at_best_names_the_lowest_fid_best(tmp_path):
    grid = plots.save_sample_grid(np.zeros((100, 784)), tmp_path / "grid.png")
    children = [child("a", FINAL_WINS, {"objective_at": "best"}, job=0),
                child("b", BEST_WINS, {"objective_at": "best"}, job=1)]
    client = FakeClient({"a": grid, "b": grid})
    out = tmp_path / "summary"
    out.mkdir()
    summary = sweep_report.summarize(client, children, ["dropout"], FID, out)  # each job says objective_at=best
    assert summary.best.info.run_id == "b" and summary.best_metric == FID_BEST
    assert summary.description.startswith(f"**Best job** for `{FID_BEST}` (lower is better): ★ dropout=b ({FID_BEST} 5)")
    sweep_report.log_on_parent(client, "parent", summary, FID)
    tags = {tag.key: tag.value for _, _, _, batch in client.logged for tag in batch}
    assert tags["best.run_id"] == "b" and tags[f"best.{FID_BEST}"] == "5.0"


def test_a_montage_that_leaves_a_job_out_names_the_artifact_and_the_error(tmp_path, caplog):
    grid = plots.save_sample_grid(np.zeros((100, 784)), tmp_path / "grid.png")
    children = [child("a", {FID: 1.0}, job=0), child("b", {FID: 2.0}, status="FAILED", job=1)]
    out = tmp_path / "summary"
    out.mkdir()
    with caplog.at_level(logging.WARNING, logger="ganlab.sweeps.summary"):
        summary = sweep_report.summarize(FakeClient({"a": grid}), children, ["dropout"], FID, out)
    assert out / "sweep_samples.png" in summary.files  # the other job's grid is still there
    (message,) = [record.getMessage() for record in caplog.records]
    assert "samples.png" in message and "run b" in message and "FAILED" in message
    assert "OSError: No such file or directory" in message


# ---------------------------------------------------------------------------- Optuna's direction


def test_the_search_takes_optunas_direction_from_the_registry():
    search = OmegaConf.load(REPO / "sweeps" / "search.yaml")
    assert "minimize" not in OmegaConf.to_yaml(search) and "maximize" not in OmegaConf.to_yaml(search)
    for objective in scores.objective_names():
        search.objective = objective
        expected = "maximize" if scores.direction(objective) == scores.HIGHER else "minimize"
        assert search.hydra.sweeper.direction == expected, objective
    search.objective = scores.ema(scores.RECALL)
    assert search.hydra.sweeper.direction == "maximize"


@pytest.mark.parametrize("objective", [scores.KID_STD, None, "nope"])
def test_a_search_refuses_an_objective_without_a_direction(objective):
    search = OmegaConf.create({"objective": objective, "direction": f"${{{sweep.DIRECTION_RESOLVER}:${{objective}}}}"})
    with pytest.raises(Exception, match="objective is null" if objective is None else f"metric '{objective}'"):
        search.direction  # noqa: B018


def test_a_one_trial_search_for_a_higher_is_better_objective_maximizes(workdir):
    """The Optuna sweeper itself gets the resolved direction: its study maximizes classifier_score."""
    result = run_cli(["-m", "-cd", str(REPO / "sweeps"), "-cn", "search", "objective=classifier_score",
                      "hydra.sweeper.n_trials=1", *QUICK], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Directions: ['maximize']" in result.stdout + result.stderr
    (results,) = workdir.glob("outputs/multirun/*/optimization_results.yaml")
    report = OmegaConf.load(results)
    (trial,) = [run for run in all_runs(workdir) if "mlflow.parentRunId" in run.data.tags]
    assert report.best_value == pytest.approx(trial.data.metrics[scores.CLASSIFIER_SCORE])

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

from conftest import REPO, all_runs
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
    """The MLflow calls summarize and log_on_parent make; `grids` maps run id -> PNG to 'download'."""

    def __init__(self, grids: dict[str, Path]):
        self.grids, self.logged = grids, []

    def download_artifacts(self, run_id, path, folder):
        if run_id not in self.grids:
            raise OSError(f"No such file or directory: '{path}'")
        return shutil.copy(self.grids[run_id], Path(folder) / path)

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.logged.append((run_id, list(metrics), list(params), list(tags)))

    def get_metric_history(self, run_id, key):
        return []  # runs without histories: the summary draws no per-epoch curves


def test_a_sweep_with_objective_at_best_names_the_lowest_fid_best(tmp_path):
    grid = plots.save_sample_grid(np.zeros((100, 784)), tmp_path / "grid.png")
    children = [child("a", FINAL_WINS, {"objective_at": "best"}, job=0),
                child("b", BEST_WINS, {"objective_at": "best"}, job=1)]
    client = FakeClient({"a": grid, "b": grid})
    out = tmp_path / "summary"
    out.mkdir()
    summary = sweep_report.summarize(client, children, ["dropout"], FID, out)  # each job says objective_at=best
    assert summary.best.info.run_id == "b" and summary.best_metric == FID_BEST
    assert summary.description.startswith(f"**Best job** for `{FID_BEST}` (lower is better): ★ dropout=b ({FID_BEST} 5.000)")  # as its column: 9.000 and 5.000
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


# ---------------------------------------------------------------------------- the best generator and the EMA


def tiny_trainer(ema=None, ema_warmup=False, seed=0):
    """A GanTrainer of two one-layer nets on 4x4 images: the EMA and best-epoch logic, in a second."""
    import keras

    from ganlab.gan.losses import NonSaturating
    from ganlab.gan.trainer import GanTrainer

    keras.utils.set_random_seed(seed)
    generator = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh")])
    discriminator = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
    images = np.random.default_rng(seed).integers(0, 256, (64, 4, 4), dtype=np.uint8)
    return GanTrainer(generator, discriminator, images, loss=NonSaturating(0.1), d_optimizer=keras.optimizers.Adam(),
                      g_optimizer=keras.optimizers.Adam(), batch_size=8, seed=seed, ema=ema, ema_warmup=ema_warmup)


def values(variables):
    return [np.array(variable.numpy()) for variable in variables]


def test_an_ema_objective_saves_the_ema_generator_of_its_best_epoch(tmp_path):
    import keras

    from ganlab.training import epochs, outputs

    trainer = tiny_trainer(ema=0.5, ema_warmup=True)
    best = epochs.BestEpoch(scores.ema(FID), tmp_path, [])
    for epoch, ema_fid in ((1, 5.0), (2, 3.0), (3, 4.0)):  # epoch 2 is the best, and not the last
        trainer.train_epoch(5, progress=False)
        record = SimpleNamespace(epoch=epoch, summary=lambda value=ema_fid: {scores.ema(FID): value})
        tracked = best.update(record, trainer)
        assert tracked[scores.best_epoch(scores.ema(FID))] == (1 if epoch == 1 else 2)
        if epoch == 2:
            ema_at_best, live_at_best = values(trainer.ema_variables), values(trainer.generator.variables)
    saved = values(keras.models.load_model(tmp_path / outputs.BEST_GENERATOR).variables)
    assert all(np.array_equal(a, b) for a, b in zip(saved, ema_at_best))
    assert not all(np.array_equal(a, b) for a, b in zip(saved, live_at_best))  # not the live weights
    assert not all(np.array_equal(a, b) for a, b in zip(saved, values(trainer.ema_variables)))  # nor the last epoch's
    assert all(np.array_equal(a, b) for a, b in zip(values(trainer.generator.variables), trainer.get_state()))  # G is live again


def test_a_live_objective_saves_the_live_generator(tmp_path):
    import keras

    from ganlab.training import epochs, outputs

    trainer = tiny_trainer(ema=0.5, ema_warmup=True)
    trainer.train_epoch(5, progress=False)
    epochs.BestEpoch(FID, tmp_path, []).update(SimpleNamespace(epoch=1, summary=lambda: {FID: 1.0}), trainer)
    saved = values(keras.models.load_model(tmp_path / outputs.BEST_GENERATOR).variables)
    assert all(np.array_equal(a, b) for a, b in zip(saved, values(trainer.generator.variables)))


def test_the_ema_warmup_follows_the_live_weights_early_and_reaches_the_decay():
    """ema=0.999 holds on to the random start for thousands of steps; warmed up (Karras et al. 2020's ramp),
    the average tracks the live weights at first, and its decay is ema itself once the ramp is done."""
    start = values(tiny_trainer(ema=0.999).generator.variables)
    plain, warm = tiny_trainer(ema=0.999), tiny_trainer(ema=0.999, ema_warmup=True)
    for trainer in (plain, warm):
        trainer.train_epoch(20, progress=False)
    live = values(warm.generator.variables)
    assert values(plain.generator.variables)[0] == pytest.approx(live[0])  # the warm-up never changes training

    def distance(a, b):
        return sum(float(np.abs(x - y).sum()) for x, y in zip(a, b))

    assert distance(values(warm.ema_variables), live) < 0.1 * distance(values(plain.ema_variables), live)
    assert distance(values(plain.ema_variables), start) < distance(values(warm.ema_variables), start)
    half_life = np.log(0.5) / np.log(0.999)  # about 693 G steps: the ramp ends at 693 / 0.05 steps
    warm.g_optimizer.iterations.assign(int(half_life / 0.05) + 10)
    assert float(warm.ema_decay()) == pytest.approx(0.999, abs=1e-6)
    warm.g_optimizer.iterations.assign(1)
    assert float(warm.ema_decay()) < 1e-5  # step 1: the average is the live weights


def test_ema_warmup_is_on_by_default_only_with_ema():
    config = OmegaConf.load(REPO / "conf" / "train.yaml")
    assert config.ema is None and config.ema_warmup is True  # the tutorial: no EMA, so nothing is warmed up
    assert tiny_trainer(ema=None, ema_warmup=True).ema_warmup is False


def test_a_job_with_an_ema_objective_logs_the_ema_generator_as_generator_best(dcgan_job):
    """Through the CLI (conftest's DCGAN_JOB): objective=ema_fid objective_at=best ema=0.5, one epoch (so the best
    epoch is the last): generator_best.keras holds generator_ema.keras's weights, not generator.keras's."""
    import keras

    workdir, result = dcgan_job
    assert f"objective {scores.ema(FID)} = " in result.stdout
    models = next(workdir.glob("outputs/runs/*/models"))
    best, ema, live = (values(keras.models.load_model(models / name).variables)
                       for name in ("generator_best.keras", "generator_ema.keras", "generator.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(best, ema))
    assert not all(np.array_equal(a, b) for a, b in zip(best, live))
    (run,) = all_runs(workdir)
    assert run.data.params["ema_warmup"] == "True" and run.data.metrics[scores.best_epoch(scores.ema(FID))] == 1

"""`-cn search` on a real Optuna study: every trial scored over seeds (its value the seed mean, with its
t interval), a clearly worse trial stopped before its last seed, and a killed search continued
(`sweep.resume`) in the same study, its results on the parent run; without Optuna, one line naming
the install command. The study's direction is the objective's, from the score registry: fid's here,
every objective's in test_objective.py::test_the_search_takes_optunas_direction_from_the_registry."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from conftest import (FIXTURE_MNIST, QUICK, REPO, all_runs, artifact_paths, hold_after_checkpoint, run_cli, start_cli,
                      store_client)
from ganlab.core import scores
from ganlab.sweeps import search, seed_stats
from test_sweep_resume import parent_and_children

GOOD_LR, BAD_LR = "1e-05", "0.05"  # after 6 steps on the fixture MNIST: fid about 327 for every seed, against 490-530
# Two trials of three seeds. TPE (seed 0) draws its first two trials at random: index 1 of the choice, then
# index 0, so trial 0 is the good lr and trial 1 the bad one, worse on both its first seeds: one-sided Wilcoxon
# p = 0.25 < prune_p 0.3, and its third seed never runs.
SEARCH = ["-m", "-cd", str(REPO / "sweeps"), "-cn", "search", "~hydra.sweeper.params",
          f"optimizer.lr=choice({BAD_LR},{GOOD_LR})", "hydra.sweeper.n_trials=2", "search.seeds=3",
          "search.prune_p=0.3", *QUICK, f"data.path={FIXTURE_MNIST}", "epochs=2", "steps_per_epoch=3"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    with open(cwd / "first.log", "w") as log:  # a file, not a pipe nobody reads: a full pipe would stall the search
        return start_cli(args, cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.heavy
def test_a_killed_search_goes_on_in_its_study_and_stops_a_clearly_worse_trial_early(workdir):
    first = start(SEARCH, workdir)
    # Trial 0 has its three seeds; trial 1's first seed (job 3) is half way, held there: kill -9 the whole search.
    hold_after_checkpoint(workdir, first, [3])
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    (sweep_dir,) = workdir.glob("outputs/multirun/*")
    storage = f"sqlite:///{sweep_dir / search.STUDY_FILE}"
    states = [trial.state for trial in optuna.load_study(study_name="ganlab_search", storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    parent, _ = parent_and_children(workdir)

    again = run_cli([*SEARCH, f"sweep.resume={parent.info.run_id}"], workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing study 'ganlab_search' in {storage}: 1 trials done, 1 interrupted" in again.stdout
    assert not list(workdir.glob(f"outputs/multirun/*/{search.STUDY_FILE}"))[1:]  # no second study

    # The same study: trial 0 as before, trial 1 went on with its missing seeds and was stopped after two.
    study = optuna.load_study(study_name="ganlab_search", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # fid's, from the registry (test_objective.py)
    good, bad = study.trials
    assert (good.params["optimizer.lr"], bad.params["optimizer.lr"]) == (float(GOOD_LR), float(BAD_LR))
    seen = [(trial.state.name, trial.intermediate_values) for trial in study.trials]
    assert good.state == optuna.trial.TrialState.COMPLETE and bad.state == optuna.trial.TrialState.PRUNED, seen
    assert sorted(bad.intermediate_values) == [0, 1]
    assert "trial 1: fid" in again.stdout and "pruned after 2 of 3 seeds" in again.stdout

    parent, children = parent_and_children(workdir)
    assert parent.info.status == "FINISHED"
    assert [child.info.status for child in children] == ["FINISHED"] * 5  # seed 2 of trial 1 never ran
    assert [child.data.params["seed"] for child in children] == ["0", "1", "2", "0", "1"]
    assert [child.data.tags[search.TRIAL_TAG] for child in children] == ["0", "0", "0", "1", "1"]
    assert int(children[3].data.tags["resumed_from_epoch"]) >= 1  # the killed seed continued its own run
    assert "seed=1" in children[4].info.run_name  # runs are named by seed too

    # The trial's value is the mean of its seeds' fid, with the 95% t interval of that mean.
    fids = [child.data.metrics[scores.FID] for child in children[:3]]
    expected = seed_stats.summarize(fids)
    assert good.value == pytest.approx(expected.mean)
    assert good.user_attrs["ci_low"] == pytest.approx(expected.ci_low)
    assert good.user_attrs["ci_high"] == pytest.approx(expected.ci_high)
    assert parent.data.tags["search.best.trial"] == "0"
    assert float(parent.data.tags["search.best.value"]) == pytest.approx(expected.mean)
    assert parent.data.tags["search.best.overrides"] == f"optimizer.lr={float(GOOD_LR)}"
    report = OmegaConf.load(next(workdir.glob(f"outputs/multirun/*/{search.RESULTS_FILE}")))
    assert f"summary/{search.RESULTS_FILE}" in artifact_paths(store_client(workdir), parent.info.run_id)
    assert report.best_trial == 0 and report.best_interval == pytest.approx([expected.ci_low, expected.ci_high])
    assert [trial.state for trial in report.trials] == ["complete", "pruned"]
    assert report.best_run_ids == [child.info.run_id for child in children[:3]]
    # The best trial closes the sweep once, before its URLs: its seed mean and interval, at the registry's precision.
    mean, low, high = scores.format_column(scores.FID, [expected.mean, expected.ci_low, expected.ci_high])
    closing = f"best setting: optimizer.lr={float(GOOD_LR)}: fid {mean} (95% interval {low} to {high}"
    assert again.stdout.count("best setting:") == 1 and closing in again.stdout, again.stdout[-2000:]
    assert again.stdout.index(closing) > again.stdout.index("ganlab: sweep of 5 jobs")


def test_a_search_without_optuna_names_the_command_that_installs_it(workdir):
    hidden = workdir / "no_optuna"
    (hidden / "optuna").mkdir(parents=True)
    (hidden / "optuna" / "__init__.py").write_text("raise ImportError(\"No module named 'optuna'\")\n")
    result = run_cli(["-m", "-cd", str(REPO / "sweeps"), "-cn", "search", *QUICK], workdir,
                     env={"PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == 'error: -cn search needs Optuna, which is in the scale extra: ' \
                                                       'pip install -e ".[scale]"'
    assert "Traceback" not in result.stderr
    (parent,) = all_runs(workdir)
    assert parent.info.status == "FAILED"
    assert not list(workdir.glob("outputs/multirun/*/0"))  # no job ran


# ---------------------------------------------------------------------------- in-process: the space, the pruner


def test_the_search_space_reads_hydras_sweep_syntax_and_a_plain_value_fixes_a_key():
    space, fixed = search.search_space(["optimizer.lr=tag(log, interval(0.00002, 0.002))", "dropout=interval(0.0, 0.6)",
                                        "loss=choice(ns,hinge)", "epochs=range(1,4)", "dropout=0.3", "epochs=range(1,4)"])
    assert space["optimizer.lr"] == optuna.distributions.FloatDistribution(0.00002, 0.002, log=True)
    assert space["loss"] == optuna.distributions.CategoricalDistribution(["ns", "hinge"])
    assert space["epochs"] == optuna.distributions.IntDistribution(1, 3)
    assert "dropout" not in space and fixed == {"dropout": "0.3"}  # the command line's plain value wins


@pytest.mark.parametrize("lines, names", [(["seed=0,1", "dropout=interval(0, 1)"], "seed: a search runs the seeds"),
                                          (["dropout=0.3"], "hydra.sweeper.params: a search needs at least one key")])
def test_the_search_space_refuses_seeds_and_an_empty_space(lines, names):
    with pytest.raises(search.InputError, match=names):
        search.search_space(lines)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_with_three_seeds_wilcoxon_can_stop_a_trial_after_two_and_only_above_a_quarter():
    """The pruning note's arithmetic, checked on Optuna's own pruner: a trial worse than the best on its
    first two seeds has one-sided p = 1/4, so prune_p 0.3 stops it there and 0.25 never does."""
    for prune_p, stops in ((0.3, True), (0.25, False)):
        study = optuna.create_study(pruner=optuna.pruners.WilcoxonPruner(p_threshold=prune_p))
        best = study.ask()
        for index, value in enumerate([1.0, 2.0, 3.0]):
            best.report(value, step=index)
        study.tell(best, 2.0)
        worse = study.ask()
        worse.report(1.6, step=0)
        assert not worse.should_prune()  # one paired seed: never
        worse.report(2.6, step=1)
        assert worse.should_prune() is stops, prune_p
    assert "first 2 seeds" in search.pruning_note(3, 0.3) and "no trial can be stopped" in search.pruning_note(3, 0.25)

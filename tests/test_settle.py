"""`hydra/sweeper=settle` through the real CLI: a huge margin stops after the pilot (and a second
sweep reuses its seeds, training nothing), a tiny one reuses them too and runs every setting to
max_seeds (killed -9 in stage 2 and continued by one of two sweep.resume started together, every
seed once), no margin is refused in one line.
The question's checks (ganlab.sweeps.settle_plan) are tested in-process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import (FIXTURE_MNIST, NO_MODELS, all_runs, hold_after_checkpoint, new_store, run_cli, start_cli,
                      store_client)
from ganlab.core.errors import InputError
from ganlab.sweeps import settle, settle_plan, settle_report, settle_store
from ganlab.tracking import run_lock
from ganlab.tracking import store as tracking

# docs/sweeps.md's 4-job settle command, on the fixture's MNIST with 5 steps and no MLflow Model logged.
SETTLE = ["-m", "hydra/sweeper=settle", "dropout=0.1,0.5", "settle.pilot_seeds=2", "settle.max_seeds=4", "epochs=1",
          "steps_per_epoch=5", "eval.num_samples=300", f"data.path={FIXTURE_MNIST}", NO_MODELS]
VERDICT = f"{settle_report.VERDICT_TAG}dropout_0.5"


def sweep_runs(cwd: Path, parent_id: str | None = None):
    """(parent, {job number: child}, [reused copies]) of the newest sweep (or `parent_id`'s) under `cwd`."""
    runs = all_runs(cwd)
    parents = sorted((run for run in runs if run.data.tags.get(tracking.SWEEP_PARENT_TAG) == "true"),
                     key=lambda run: run.info.start_time)
    parent = next(run for run in parents if run.info.run_id == parent_id) if parent_id else parents[-1]
    children = [run for run in runs if run.data.tags.get(tracking.PARENT_RUN_TAG) == parent.info.run_id]
    jobs = {int(run.data.tags[tracking.JOB_NUM_TAG]): run for run in children if tracking.JOB_NUM_TAG in run.data.tags}
    return parent, jobs, [run for run in children if settle_store.REUSED_TAG in run.data.tags]


def settings_and_seeds(runs) -> list[tuple[str, str]]:
    return sorted((run.data.params["dropout"], run.data.params["seed"]) for run in runs)


@pytest.mark.heavy
def test_a_huge_margin_stops_after_the_pilot_later_sweeps_reuse_its_seeds_and_a_tiny_one_killed_in_stage_2_ends_with_every_seed_once(workdir):
    """One store, three settle sweeps over the same settings: a huge margin (the pilot only); an infinite metric
    (every seed reused, nothing trained, no interval, no stage 2); then a tiny margin, which reuses the pilot, runs
    stage 2 to max_seeds, is killed -9 there (job 0 done, job 1 half way, jobs 2-3 not started) and is continued
    by one of two sweep.resume started together: the other names it in one line."""
    done = run_cli([*SETTLE, "settle.margin=1000"], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    parent, jobs, reused = sweep_runs(workdir)
    assert sorted(jobs) == [0, 1, 2, 3] and not reused  # exactly the pilot: 2 settings x 2 seeds
    assert settings_and_seeds(jobs.values()) == [("0.1", "0"), ("0.1", "1"), ("0.5", "0"), ("0.5", "1")]
    assert all(run.info.status == "FINISHED" for run in jobs.values()) and parent.info.status == "FINISHED"
    assert parent.data.tags[VERDICT] == settle.EQUIVALENT
    assert parent.data.tags["settle.reference"] == "dropout=0.1"  # the grid's first: conf/'s 0.3 is not in it
    assert parent.data.tags[tracking.NOTE_TAG].startswith("**Settled**")  # the verdicts first on the parent
    assert "| dropout=0.5 | **equivalent** |" in done.stdout
    assert "dropout=0.5 seed=1" in {run.info.run_name for run in jobs.values()}  # seeds are in the run names
    assert not any(key.startswith("settle.") for run in jobs.values() for key in run.data.params)
    pilot = jobs

    report = run_cli(["--by", "dropout", "--reference", "dropout=0.1", "--out", "report"], workdir, module="ganlab.report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "dropout=0.5 (2 runs)" in report.stdout

    # Another question on the same settings, fid_class_worst: the pilot's 4 seeds are in the store, reused, not
    # trained again. Their fid_class_worst is inf (300 samples measure no class): no interval, so no stage 2, undecided.
    worst = run_cli([*SETTLE, "settle.margin=1000", "settle.metric=fid_class_worst"], workdir)
    assert worst.returncode == 0, worst.stderr[-3000:]
    second, trained, copies = sweep_runs(workdir)
    assert second.info.run_id != parent.info.run_id and not trained  # nothing trained
    assert sorted(run.data.tags[settle_store.REUSED_TAG] for run in copies) == sorted(run.info.run_id for run in pilot.values())
    assert "Reused (already in the store, not rerun): dropout=0.1: seeds 0, 1; dropout=0.5: seeds 0, 1." in worst.stdout
    assert "sweep of 0 jobs trained, 4 seeds reused" in worst.stdout  # copies are not counted as jobs
    assert second.data.tags[VERDICT] == settle.UNDECIDED
    assert "the reference dropout=0.1 scored inf on a pilot seed" in worst.stdout and "Warning" not in worst.stderr
    assert "**undecided** (the setting and the reference scored inf on a seed: no interval exists)" in worst.stdout

    # A tiny margin: the pilot's 4 seeds are reused, stage 2 runs seeds 2 and 3 of each setting as jobs 0-3. It is
    # killed once job 1 has made its run and first checkpoint (held there); its own folder, so job 1 is this sweep's.
    tiny = workdir / "tiny"
    tiny.mkdir()
    command = [*SETTLE, "settle.margin=0.001", f"tracking.uri=sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"]
    sweep = start_cli(command, tiny, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    hold_after_checkpoint(tiny, sweep, [1], epoch=0)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    killed, jobs, copies = sweep_runs(workdir)
    assert sorted(jobs) == [0, 1] and jobs[0].info.status == "FINISHED" and jobs[1].info.status == "RUNNING"
    assert len(copies) == 4

    # Two sweep.resume started together: one goes on, the other names it in one line and makes nothing.
    resumes = [start_cli([*command, f"sweep.resume={killed.info.run_id}"], tiny) for _ in range(2)]
    outcomes = [resume.communicate(timeout=900) for resume in resumes]
    codes = [resume.returncode for resume in resumes]
    assert sorted(codes) == [0, 1], [err[-2000:] for _, err in outcomes]
    winner, (won, _), (_, refused) = resumes[codes.index(0)], outcomes[codes.index(0)], outcomes[codes.index(1)]
    assert f"continuing sweep run {killed.info.run_id}" in won
    assert "sweep job 0 (dropout=0.1 seed=2) finished in run" in won  # not trained again
    lines = [line for line in refused.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: sweep.resume: sweep {killed.info.run_id} is held by process {winner.pid} on host {socket.gethostname()}"), lines
    assert len(list((tiny / "outputs" / "multirun").iterdir())) == 2  # the killed sweep's and the winner's
    after, jobs, copies = sweep_runs(workdir, killed.info.run_id)
    assert sorted(jobs) == [0, 1, 2, 3] and len(copies) == 4  # stage 2, each job once; the pilot reused, not copied twice
    assert settings_and_seeds([*jobs.values(), *copies]) == [(d, str(s)) for d in ("0.1", "0.5") for s in range(4)]
    assert jobs[1].info.run_id == only_run_of_job(workdir, killed.info.run_id, jobs, 1)  # continued, not restarted
    assert all(run.info.status == "FINISHED" for run in jobs.values()) and after.info.status == "FINISHED"
    assert not any(run_lock.OWNER_TAG in run.data.tags for run in [after, *jobs.values()])  # every hold released
    assert not any("sweep.resume" in run.data.params or "sweep.resume" in run.data.tags[tracking.OVERRIDES_TAG]
                   for run in jobs.values())
    assert after.data.tags[VERDICT] != settle.EQUIVALENT
    assert "max_seeds reached" in next(tiny.glob("outputs/multirun/*/summary/settle.md")).read_text()

    # The same scoring protocol: what the sweeper expects a job to tag is what the jobs tagged; a run whose
    # data (its data sha256 tag) differs from what this sweep's jobs will read is not reused.
    client, first = store_client(workdir), pilot[0]
    protocol = settle_store.protocol({"data": {"name": "mnist", "path": str(FIXTURE_MNIST)}, "eval": {"enabled": True}})
    assert protocol == {key: first.data.tags[key] for key in (tracking.DATA_SHA_TAG, tracking.CLASSIFIER_SHA_TAG)}
    expected = {key: value for key, value in first.data.params.items() if key != "seed"}
    client.set_tag(first.info.run_id, tracking.DATA_SHA_TAG, "0" * 64)
    found = settle_store.reusable(client, first.info.experiment_id, "a later sweep", expected, "fid", 1, protocol)
    assert found[1].data.params["dropout"] == first.data.params["dropout"] and 0 not in found


def only_run_of_job(store_cwd: Path, parent_id: str, jobs, job: int) -> str:
    """The one run job `job` has under the sweep (a second attempt would have made a second run)."""
    client = store_client(store_cwd)
    found = client.search_runs([jobs[job].info.experiment_id], filter_string=(
        f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_id}' and tags.`{tracking.JOB_NUM_TAG}` = '{job}'"))
    assert len(found) == 1
    return found[0].info.run_id


@pytest.mark.bare_workdir
def test_without_a_margin_it_refuses_in_one_line_and_makes_nothing(workdir):
    refused = run_cli(SETTLE, workdir)
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0 and "settle.margin: required" in refused.stderr
    assert "e.g. settle.margin=10" in refused.stderr
    assert not (workdir / "outputs").exists() and not (workdir / "mlruns").exists()


def config(**settle_keys):
    keys = {"margin": 5, "reference": None, "metric": None, "epoch": None, "alpha": 0.05, "pilot_seeds": 3,
            "max_seeds": 20, **settle_keys}
    return OmegaConf.create({"settle": keys, "objective": "fid", "epochs": 10})


def test_the_question_defaults_to_conf_s_setting_the_objective_and_the_last_epoch():
    asked = settle_plan.question(config(), ["loss=ns,hinge", "dropout=0.3", "epochs=10", "settle.margin=5"])
    assert asked.settings == [("loss=ns",), ("loss=hinge",)]
    assert asked.reference == ("loss=ns",) and asked.metric == "fid" and asked.better == settle.LOWER
    assert asked.epoch == 10 and asked.common == ["dropout=0.3", "epochs=10"]
    grid = settle_plan.question(config(), ["dropout=0.1,0.3,0.5"])
    assert grid.reference == ("dropout=0.3",)  # conf/'s dropout, though not first
    named = settle_plan.question(config(reference={"dropout": 0.5}, metric="recall", epoch=5), ["dropout=0.1,0.3,0.5"])
    assert named.reference == ("dropout=0.5",) and named.better == settle.HIGHER and named.epoch == 5
    quoted = settle_plan.question(config(reference="loss=hinge"), ["loss=ns,hinge", "dropout=0.1"])
    assert quoted.reference == ("loss=hinge",)
    seeds = settle_plan.jobs(grid, {("dropout=0.1",): {0, 2}}, {setting: 3 for setting in grid.settings})
    assert seeds[:2] == [(("dropout=0.1",), 1), (("dropout=0.3",), 0)]  # the smallest seeds not yet run


@pytest.mark.parametrize("settle_keys, overrides, key", [
    ({"margin": None}, ["dropout=0.1,0.3"], "settle.margin: required"),
    ({"margin": -1}, ["dropout=0.1,0.3"], "settle.margin"),
    ({"alpha": 1.5}, ["dropout=0.1,0.3"], "settle.alpha"),
    ({"pilot_seeds": 1}, ["dropout=0.1,0.3"], "settle.pilot_seeds"),
    ({"max_seeds": 2}, ["dropout=0.1,0.3"], "settle.max_seeds"),
    ({"metric": "kid_std"}, ["dropout=0.1,0.3"], "settle.metric"),
    ({"epoch": 11}, ["dropout=0.1,0.3"], "settle.epoch"),
    ({"reference": "dropout=0.9"}, ["dropout=0.1,0.3"], "settle.reference"),
    ({}, ["dropout=0.1,0.3", "seed=0,1"], "seed: a settle sweep picks the seeds"),
    ({}, ["dropout=0.1"], "settle: a settle sweep compares two or more settings"),
])
def test_an_ill_posed_question_is_refused_naming_its_key(settle_keys, overrides, key):
    with pytest.raises(InputError) as refused:
        settle_plan.question(config(**settle_keys), overrides)
    assert str(refused.value).startswith(key.split(":")[0]) and key in str(refused.value)
    assert "\n" not in str(refused.value)


def test_seeds_an_earlier_sweep_trained_and_scored_alike_are_reused_and_copied_under_the_settle_sweep(tmp_path):
    client, experiment = tracking.open_store(new_store(tmp_path / "mlflow.db"), "ganlab")
    expected = {"loss.name": "ns", "epochs": "10", "dropout": "0.3", "eval.num_samples": "10000", "eval.repeats": "1",
                "threads": "2", "seed": "0"}
    study = client.create_run(experiment, tags={tracking.SWEEP_PARENT_TAG: "true"}).info.run_id
    settling = client.create_run(experiment, tags={tracking.SWEEP_PARENT_TAG: "true"}).info.run_id
    protocol = {tracking.DATA_SHA_TAG: "d" * 64, tracking.CLASSIFIER_SHA_TAG: "c" * 64}  # what the sweep's jobs will use

    def run(seed, parent=study, status="FINISHED", steps=(5, 10), tags=protocol, **changed):
        # As the loss study logged them: one thread, and from before eval.repeats was recorded (its default, 1).
        params = {**{k: v for k, v in expected.items() if k != "eval.repeats"}, "threads": "1", "seed": str(seed), **changed}
        made = client.create_run(experiment, run_name=f"loss=ns seed={seed}",
                                 tags={tracking.PARENT_RUN_TAG: parent, **tags})
        for key, value in params.items():
            client.log_param(made.info.run_id, key, value)
        for step in steps:
            client.log_metric(made.info.run_id, "fid", 100.0 + seed + step, step=step)
        client.set_terminated(made.info.run_id, status)
        return made.info.run_id

    reused = {seed: run(seed) for seed in (0, 1, 2)}
    run(3, status="FAILED")
    run(4, steps=(5,))  # never scored at epoch 10
    run(5, **{"eval.num_samples": "300"})  # scored otherwise
    run(6, **{"dropout": "0.5"})  # another setting
    run(8, tags={**protocol, tracking.DATA_SHA_TAG: "e" * 64})  # trained on other data
    run(9, tags={**protocol, tracking.CLASSIFIER_SHA_TAG: "f" * 64})  # scored by other classifier weights
    run(10, tags={tracking.CLASSIFIER_SHA_TAG: "c" * 64})  # its data unknown
    run(7, parent=settling)  # the settle sweep's own job: found by its job number, not reused
    found = settle_store.reusable(client, experiment, settling, expected, "fid", 10, protocol)
    assert {seed: found[seed].info.run_id for seed in found} == reused
    # One rule for equal params (ganlab.core.params.same_value, the comparison's too): None as MLflow stores it.
    assert settle_store.same_setting({"ema": "None", "dropout": "0.30"}, {"ema": None, "dropout": "0.3"}, {})
    assert settle_store.score_at(client, reused[2], "fid", 10) == 112.0

    copy = client.get_run(settle_store.copy_as_child(client, found[1], settling, experiment))
    assert copy.info.status == "FINISHED" and copy.data.tags[tracking.PARENT_RUN_TAG] == settling
    assert copy.data.params["seed"] == "1" and settle_store.score_at(client, copy.info.run_id, "fid", 10) == 111.0
    assert settle_store.artifacts_of(copy) == reused[1]  # its pictures are the reused run's
    assert set(settle_store.reused_children(client, experiment, settling)) == {reused[1]}
    # Another sweep later: the copy is not a second seed 1; the settle sweep's own job is a seed like any other.
    later = settle_store.reusable(client, experiment, "another sweep", expected, "fid", 10, protocol)
    assert sorted(later) == [0, 1, 2, 7] and later[1].info.run_id == reused[1]

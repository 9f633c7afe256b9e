"""`python -m ganlab.reproduce` and the baseline record: a small record made and reproduced for
real on the bundled fixture, a perturbed record that differs, the verdict rules alone, old
records still read, and the committed table that must be the committed record's."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import FIXTURE_MNIST, REPO, artifact_paths, run_cli, store_client
from ganlab.baseline import record as baseline
from ganlab.core import config
from ganlab.baseline import readback
from ganlab.core import record
from ganlab import reproduce
from ganlab.core import scores
from ganlab.baseline import verdict
from ganlab.baseline.record import Record
from ganlab.baseline.verdict import CONSISTENT, DIFFERS, EXACT, JobResult

# The smallest baseline that still scores: 1 seed, 1 epoch of the fixture (16 steps), 500 samples.
RECORD_SWEEP = ["-m", "experiment=baseline", "seed=0", "epochs=1", "threads=1", "eval.num_samples=500",
                f"data.path={FIXTURE_MNIST}"]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A record written from a real sweep, then reproduced by the CLI: (workdir, record, result)."""
    workdir = tmp_path_factory.mktemp("reproduce")
    made = run_cli(RECORD_SWEEP, workdir)
    assert made.returncode == 0, made.stderr[-3000:]
    record = workdir / "record"
    written = run_cli(["--write-record", str(record), "--experiment", "baseline"], workdir, module="ganlab.reproduce")
    assert written.returncode == 0, written.stderr[-3000:]
    result = run_cli(["--seeds", "0", "--epochs", "1", "--data", str(FIXTURE_MNIST), "--record", str(record)],
                     workdir, module="ganlab.reproduce")
    return workdir, record, result


def reproduction_parent(workdir: Path):
    client = store_client(workdir)
    experiment = client.get_experiment_by_name(reproduce.EXPERIMENT)
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`sweep.parent` = 'true'")
    assert len(parents) == 1
    return client, parents[0]


@pytest.mark.heavy
def test_record_holds_every_value_and_its_machine(reproduced):
    _, record, _ = reproduced
    with open(record / baseline.RUNS_CSV, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == ("dtype", "seed", "epoch", "metric", "value")
    metrics = {row["metric"] for row in rows if row["epoch"] == "1"}
    assert set(scores.SCORE_NAMES) | {scores.D_LOSS, scores.G_LOSS} <= metrics
    steps = [row for row in rows if row["metric"] == baseline.STEP_METRICS[0]]
    assert [int(row["epoch"]) for row in steps] == list(range(1, 17))  # the fixture's 16 steps (< 20)
    assert {row["dtype"] for row in rows} == {"fp32"} and {row["seed"] for row in rows} == {"0"}
    machine = json.loads((record / baseline.MACHINE_JSON).read_text())
    for key in ("cpu_model", "isa", "cores", "threads", "accelerator", "git_commit", "python", "data_sha256", "date"):
        assert key in machine, key
    assert machine["threads"] == 1
    assert {"tensorflow", "keras", "numpy", "scipy", "mlflow", "hydra-core"} <= set(machine["versions"])
    assert machine["overrides"] == ["experiment=baseline", "eval.num_samples=500"]  # applied again by a reproduction
    assert (record / baseline.TABLE_MD).read_text() == baseline.baseline_table(baseline.read_baseline(record))


def test_reproducing_on_the_same_machine_is_exact(reproduced):
    workdir, _, result = reproduced
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "seed 0: exact - same ISA, accelerator, versions, threads and data as the record" in result.stdout
    assert "verdict: exact" in result.stdout
    client, parent = reproduction_parent(workdir)
    assert parent.data.tags["reproduce.verdict"] == EXACT
    assert parent.data.tags["reproduce.seed0"] == EXACT
    assert {"reproduce/checks.csv", "reproduce/checks.md"} <= artifact_paths(client, parent.info.run_id)
    local = client.download_artifacts(parent.info.run_id, "reproduce/checks.csv", str(workdir))
    with open(local, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows and all(row["exact"] == "True" for row in rows)
    assert any(row["metric"] == scores.FID and row["z"] for row in rows)


def test_a_perturbed_record_differs(reproduced, tmp_path, capsys):
    """In-process (the reproduce CLI itself runs in the `reproduced` fixture), against the reproduction's run."""
    workdir, record, _ = reproduced
    perturbed = tmp_path / "perturbed"
    shutil.copytree(record, perturbed)
    rows = list(csv.reader(open(perturbed / baseline.RUNS_CSV, newline="")))
    for row in rows[1:]:
        if row[2] == "1" and row[3] == scores.FID:
            row[4] = repr(float(row[4]) * 1.01)
    with open(perturbed / baseline.RUNS_CSV, "w", newline="") as stream:
        csv.writer(stream, lineterminator="\n").writerows(rows)
    _, parent = reproduction_parent(workdir)
    code = reproduce.main(["--seeds", "0", "--epochs", "1", "--record", str(perturbed), "--compare-run", parent.info.run_id,
                           "--tracking-uri", f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"])
    out, err = capsys.readouterr()
    assert code == 1, out[-3000:] + err[-3000:]
    assert f"seed 0: differs - same ISA, accelerator, versions, threads and data as the record, yet {scores.FID} at epoch 1" in out
    assert "verdict: differs" in out


# --------------------------------------------------------------------------- the verdict alone

MACHINE = {"cpu_model": "Test CPU", "isa": ["avx2"], "threads": 1, "data_sha256": "d" * 64, "git_commit": "c" * 40,
           "versions": {"tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6", "scipy": "1.16.0"},
           "steps_per_epoch": 469, "date": "2026-11-30"}
FIDS = {0: 240.0, 1: 230.0, 2: 250.0}  # mean 240, std 10


def unit_record() -> Record:
    values = {}
    for seed, fid in FIDS.items():
        values[("fp32", seed, scores.FID, 1)] = fid
        values[("fp32", seed, scores.D_LOSS, 1)] = 0.5 + seed / 100
        values[("fp32", seed, scores.STEPS_PER_SEC, 1)] = 3.0
        values[("fp32", seed, baseline.STEP_METRICS[0], 1)] = 0.7 + seed / 100
    return Record(MACHINE, values, Path("record"))


def job(seed=0, fid=None, d_loss=None, step=None, **environment) -> JobResult:
    env = json.loads(json.dumps(MACHINE))
    env.update(environment)
    record = unit_record().values
    return JobResult(seed=seed, dtype="fp32",
                     values={(scores.FID, 1): FIDS[seed] if fid is None else fid,
                             (scores.D_LOSS, 1): record[("fp32", seed, scores.D_LOSS, 1)] if d_loss is None else d_loss,
                             (scores.STEPS_PER_SEC, 1): 99.0},  # a timing: never compared
                     steps={(baseline.STEP_METRICS[0], 1): record[("fp32", seed, baseline.STEP_METRICS[0], 1)]
                            if step is None else step},
                     environment=env)


def test_same_machine_and_numbers_is_exact():
    found = verdict.judge(job(), unit_record(), epochs=1)
    assert found.verdict == EXACT and found.differences == []
    assert "same ISA, accelerator, versions, threads and data" in found.line()


def test_same_machine_other_numbers_differs():
    assert verdict.judge(job(fid=240.0 * (1 + 1e-5)), unit_record(), epochs=1).verdict == DIFFERS
    assert verdict.judge(job(step=0.7000001), unit_record(), epochs=1).verdict == DIFFERS  # per-step: equal or not
    assert verdict.judge(job(fid=240.0 * (1 + 1e-7)), unit_record(), epochs=1).verdict == EXACT  # within 1e-6


def test_other_isa_within_the_seed_spread_is_consistent():
    found = verdict.judge(job(fid=265.0, d_loss=0.9, isa=["avx2", "avx512f"]), unit_record(), epochs=1)  # z = 2.5
    assert found.verdict == CONSISTENT, found.line()
    assert found.differences == ["ISA"]
    assert "ISA differs from the record (avx2 avx512f here, avx2 in the record)" in found.line()
    assert "|z| <= 3" in found.line()


def test_other_isa_far_from_the_seeds_differs():
    found = verdict.judge(job(fid=280.0, isa=["avx2", "avx512f"]), unit_record(), epochs=1)  # z = 4
    assert found.verdict == DIFFERS
    assert f"{scores.FID} at epoch 1" in found.line() and "z = 4.00" in found.line()


def test_the_reason_names_what_differs():
    other = {"isa": ["avx2", "avx512f", "avx512_bf16"], "threads": 4,
             "versions": {**MACHINE["versions"], "tensorflow": "2.20.0"}}
    found = verdict.judge(job(**other), unit_record(), epochs=1)
    assert found.differences == ["ISA", "versions", "threads"]
    assert "ISA, versions, threads differ from the record" in found.line()
    assert "tensorflow 2.20.0 here, 2.21.0 in the record" in found.line()
    assert found.verdict == CONSISTENT  # the same numbers on other ground: consistent, not exact
    only_versions = verdict.judge(job(versions={**MACHINE["versions"], "numpy": "2.0.0"}), unit_record(), epochs=1)
    assert only_versions.differences == ["versions"]
    mlflow_only = verdict.judge(job(versions={**MACHINE["versions"], "mlflow": "9.9"}), unit_record(), epochs=1)
    assert mlflow_only.verdict == EXACT  # MLflow does not compute numbers


def test_a_gpu_rerun_of_a_cpu_record_is_never_exact():
    """Same ISA, versions and numbers, but on a GPU: the accelerator is part of "exact"; the reason names it."""
    record = unit_record()
    record.machine = {**MACHINE, "accelerator": "none"}
    gpu = "GPU 0: NVIDIA H200"
    same_numbers = verdict.judge(job(accelerator=gpu), record, epochs=1)
    assert same_numbers.verdict == CONSISTENT and same_numbers.differences == ["accelerator"]
    assert f"accelerator differs from the record ({gpu} here, none in the record)" in same_numbers.line()
    assert "(its numbers even equal the record's exactly)" in same_numbers.line()
    far = verdict.judge(job(fid=280.0, accelerator=gpu), record, epochs=1)  # z = 4
    assert far.verdict == DIFFERS and "accelerator differs from the record" in far.line() and "z = 4.00" in far.line()
    assert "a real change" not in far.line()  # other hardware, not a change of the code
    assert verdict.judge(job(accelerator="none"), record, epochs=1).verdict == EXACT


def test_a_spread_of_zero_falls_back_on_the_pooled_spread():
    record = unit_record()
    for seed in FIDS:  # every seed at 0 at epoch 1, spread at epoch 2
        record.values[("fp32", seed, scores.MODES_COVERED, 1)] = 0.0
        record.values[("fp32", seed, scores.MODES_COVERED, 2)] = float(seed)
    mean, spread = verdict.seed_spread(record, "fp32", scores.MODES_COVERED, 1)
    assert mean == 0.0 and spread == pytest.approx(0.7071, rel=1e-3)


def test_an_infinite_score_has_no_spread_and_its_epoch_is_left_out_of_the_pooled_one():
    """fid_class_worst is inf where a class was never drawn: no spread at that epoch, none in the pool from it."""
    record = unit_record()
    for seed in FIDS:
        record.values[("fp32", seed, scores.FID_CLASS_WORST, 1)] = math.inf if seed == 0 else 300.0
        record.values[("fp32", seed, scores.FID_CLASS_WORST, 2)] = 300.0 + seed
        record.values[("fp32", seed, scores.FID_CLASS_WORST, 3)] = 310.0  # no spread at this epoch: the pool's
    mean, spread = verdict.seed_spread(record, "fp32", scores.FID_CLASS_WORST, 1)
    assert mean == math.inf and math.isnan(spread)
    mean, spread = verdict.seed_spread(record, "fp32", scores.FID_CLASS_WORST, 3)
    assert mean == 310.0 and spread == pytest.approx(math.sqrt(0.5))  # epochs 2 and 3 pooled, epoch 1 left out


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, option", [
    (["--seeds", "7"], "--seeds"),
    (["--seeds", "0,x"], "--seeds"),
    (["--epochs", "2"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--precision", "fp16"], "--precision"),
    (["--precision", "bf16"], "--precision"),  # the record has fp32 only
    (["--data", "/nonexistent/mnist.npz"], "--data"),
])
def test_bad_options_name_the_option(tmp_path, capsys, args, option):
    folder = tmp_path / "record"
    folder.mkdir()
    record = unit_record()
    baseline.write_runs_csv(record.values, folder / baseline.RUNS_CSV)
    (folder / baseline.MACHINE_JSON).write_text(json.dumps(MACHINE))
    assert reproduce.main(["--record", str(folder), *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {option}:") and error.count("\n") == 1


def test_a_missing_record_is_bad_input(tmp_path, capsys):
    assert reproduce.main(["--record", str(tmp_path / "nowhere")]) == 2
    assert "error: --record:" in capsys.readouterr().err


# --------------------------------------------------------------------------- the record's files


def test_the_dtype_column_is_written_and_an_old_precision_column_still_read(tmp_path):
    values = unit_record().values
    written = baseline.write_runs_csv(values, tmp_path / "runs.csv")
    assert written.read_text().splitlines()[0] == "dtype,seed,epoch,metric,value"
    old = tmp_path / "old"
    old.mkdir()
    lines = written.read_text().splitlines()
    (old / baseline.RUNS_CSV).write_text("\n".join(["precision,seed,epoch,metric,value", *lines[1:]]) + "\n")
    (old / baseline.MACHINE_JSON).write_text(json.dumps(MACHINE))
    read = baseline.read_baseline(old)
    assert read.values == values and read.dtypes() == ["fp32"]
    observations, keys = record.read_observations(old / baseline.RUNS_CSV)
    assert keys == ["dtype"] and {o.group["dtype"] for o in observations} == {"fp32"}


def test_both_names_of_the_dtype_column_at_once_are_refused(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("precision,dtype,seed,epoch,metric,value\nfp32,fp32,0,1,fid,1.0\n")
    with pytest.raises(ValueError, match="name a key twice"):
        record.read_observations(path)


def test_a_record_grouped_by_other_keys_is_not_a_baseline(tmp_path, capsys):
    folder = tmp_path / "record"
    folder.mkdir()
    (folder / baseline.RUNS_CSV).write_text("dropout,seed,epoch,metric,value\n0.3,0,1,fid,1.0\n")
    (folder / baseline.MACHINE_JSON).write_text(json.dumps(MACHINE))
    assert reproduce.main(["--record", str(folder)]) == 2
    assert "expected dtype,seed,epoch,metric,value" in capsys.readouterr().err


def test_the_committed_record_has_the_dtype_column():
    header = (REPO / "docs" / "baseline" / baseline.RUNS_CSV).read_text().splitlines()[0]
    assert header == "dtype,seed,epoch,metric,value"


def test_a_reproduction_sets_where_and_what_it_checks_and_keeps_the_rest():
    overrides = ("experiment=baseline seed=0 epochs=1 threads=1 data.path=/x.npz tracking.uri=sqlite:///y "
                 "tracking.experiment=z dtype=bf16 precision=fp32 hydra.sweep.dir=/w eval.num_samples=500")
    assert readback.record_overrides(overrides) == ["experiment=baseline", "eval.num_samples=500"]
    assert set(config.WHERE_KEYS) <= set(readback.OWN_KEYS)


class Artifacts:
    """An MLflow client's two artifact calls: `listed` paths, and a download that raises `failure`."""

    def __init__(self, listed, failure=None):
        self.listed, self.failure = listed, failure

    def list_artifacts(self, run_id, path=None):
        return [SimpleNamespace(path=name, is_dir=False) for name in self.listed]

    def download_artifacts(self, run_id, path, folder):
        raise self.failure


def test_a_losses_file_that_cannot_be_downloaded_is_named(capsys):
    client = Artifacts([readback.LOSSES_FILE], OSError("disk full"))
    assert readback._first_steps(client, "run123") == {}
    error = capsys.readouterr().err
    assert f"warning: could not read artifact {readback.LOSSES_FILE} of run run123 (OSError: disk full)" in error


def test_a_job_without_a_losses_file_has_no_steps_and_no_warning(capsys):
    assert readback._first_steps(Artifacts([]), "run123") == {}
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- the table


def two_dtype_record() -> Record:
    values = {}
    for dtype, fid, speed in (("fp32", 60.0, 4.0), ("bf16", 55.0, 3.0)):
        for seed in (0, 1, 2):
            for epoch in (1, 5, 25):
                for metric in scores.HEADLINE:
                    values[(dtype, seed, metric, epoch)] = fid + seed if metric == scores.FID else 0.5 + seed / 10
                values[(dtype, seed, scores.STEPS_PER_SEC, epoch)] = speed
    return Record({**MACHINE, "isa": ["avx2"]}, values, Path("record"))


def test_table_shows_fp32_and_the_bf16_verdict():
    table = baseline.baseline_table(two_dtype_record())
    lines = table.splitlines()
    assert "| epoch | " + " | ".join(scores.HEADLINE) + " |" in lines
    assert any(line.startswith("| 25 | 61 ± 1 |") for line in lines)
    assert "bf16 trains slower than fp32: 3 against 4 steps/s (0.75x" in table
    assert f"bf16 is clearly better in {scores.FID}" in table
    assert "depend on the CPU" in table


def test_committed_table_is_the_committed_record():
    folder = REPO / "docs" / "baseline"
    assert (folder / baseline.RUNS_CSV).is_file(), "no docs/baseline/runs.csv: write the record with --write-record"
    expected = baseline.baseline_table(baseline.read_baseline(folder))
    assert (folder / baseline.TABLE_MD).read_text() == expected, (
        "docs/baseline/table.md is not the table of docs/baseline/runs.csv; "
        "run: python -m ganlab.reproduce --write-table docs/baseline")


def test_constraints_pin_the_record_versions():
    machine = json.loads((REPO / "docs" / "baseline" / baseline.MACHINE_JSON).read_text())
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for package, version in machine["versions"].items():
        assert pins.get(package) == version, f"constraints.txt pins {package} {pins.get(package)}, the record {version}"


README_MARKERS = ("<!-- baseline-table -->", "<!-- /baseline-table -->")


def test_readme_table_is_the_record():
    readme = (REPO / "README.md").read_text()
    start, end = README_MARKERS
    assert start in readme and end in readme, (
        f"README.md lacks the markers {start} ... {end}: paste docs/baseline/table.md between them.")
    pasted = readme.split(start, 1)[1].split(end, 1)[0]
    assert pasted.strip() == (REPO / "docs" / "baseline" / baseline.TABLE_MD).read_text().strip(), (
        "the README's baseline table is not docs/baseline/table.md: paste that file between the markers again.")

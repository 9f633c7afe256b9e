"""A sweep checks what every job will need before anything exists: through the real CLI, each bad sweep
ends with one paragraph naming the key, choice or file, a non-zero exit, no MLflow run and no sweep folder,
for Hydra's basic sweeper, the parallel launcher, `hydra/sweeper=settle` and `-cn search`."""

from __future__ import annotations

import pytest

from conftest import QUICK, REPO, run_cli

WITHOUT_DATA = [item for item in QUICK if not item.startswith("data.path=")]  # for a case that names its own
NOTHING = "Nothing was started (no job ran, no MLflow run was made)"

REFUSED = [
    ("a misspelt choice in a swept list", ["-m", "loss=ns,nss", *QUICK],
     "loss=nss: there is no loss option 'nss'; valid: hinge, lsgan, ns, wgan_gp (the sweep's job loss=nss)"),
    ("a missing data file, parallel jobs", ["-m", "hydra/launcher=parallel", "dropout=0.1,0.3", *WITHOUT_DATA,
                                            "data.path=missing/mnist.npz"],
     "data.path: 'missing/mnist.npz' does not exist. Give a .npz in Keras layout"),
    ("settle: a misspelt choice", ["-m", "hydra/sweeper=settle", "settle.margin=10", "loss=ns,nss", *QUICK],
     "loss=nss: there is no loss option 'nss'"),
    ("search: an interval reaching out of range", ["-m", "-cd", str(REPO / "sweeps"), "-cn", "search",
                                                   "dropout=interval(0.0, 1.5)", *QUICK],
     "(from dropout=interval(0.0, 1.5))"),
]


@pytest.mark.bare_workdir
@pytest.mark.parametrize(("case", "args", "message"), REFUSED, ids=[case[0] for case in REFUSED])
def test_a_bad_sweep_is_refused_before_any_job_or_run_exists(workdir, case, args, message):
    result = run_cli(args, workdir)
    assert result.returncode == 1, result.stderr[-3000:]
    (paragraph,) = result.stderr.strip().splitlines()  # one paragraph: no warning, no traceback
    assert paragraph.startswith("error: ") and message in paragraph and NOTHING in paragraph
    assert "data.path" not in message or "(every job of the sweep reads it)" in paragraph
    assert not (workdir / "mlruns").exists()  # no store, so no parent run and no job run
    assert not (workdir / "outputs").exists()  # no sweep folder


BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SEARCH = "hydra_plugins.ganlab_sweepers.search.SearchSweeper"


def plan(target: str, overrides: list[str]):
    from omegaconf import OmegaConf

    from ganlab.sweeps import precheck

    return precheck.planned_jobs(OmegaConf.create({"hydra": {"sweeper": {"_target_": target}}}), overrides)


def test_which_jobs_are_checked_every_job_of_a_grid_else_every_value_once():
    """In-process: the basic sweeper's grid in full, as it launches it (a later value for a key wins); a grid
    over MAX_JOBS and a search one value at a time, an interval by the ends a sampler may draw."""
    import math
    from ganlab.sweeps import precheck

    grid = plan(BASIC, ["dropout=0.1,0.3", "loss=ns,hinge", "epochs=1", "epochs=2"])
    assert grid.jobs == [["dropout=0.1", "loss=ns", "epochs=2"], ["dropout=0.1", "loss=hinge", "epochs=2"],
                         ["dropout=0.3", "loss=ns", "epochs=2"], ["dropout=0.3", "loss=hinge", "epochs=2"]]
    assert grid.swept == ["dropout", "loss"] and grid.label(grid.jobs[3]) == "the sweep's job dropout=0.3 loss=hinge"
    large = plan(BASIC, ["seed=range(0,5)", "dropout=0.0,0.1,0.2,0.3,0.4", "batch_size=32,64,128"])
    assert 5 * 5 * 3 > precheck.MAX_JOBS and len(large.jobs) == 1 + 4 + 4 + 2
    assert {item for job in large.jobs for item in job} == {*(f"seed={i}" for i in range(5)),
                                                             *(f"dropout=0.{i}" for i in range(5)),
                                                             "batch_size=32", "batch_size=64", "batch_size=128"}
    assert large.label(["seed=0", "dropout=0.4", "batch_size=32"]) == "the sweep's job dropout=0.4"
    search = plan(SEARCH, ["dropout=interval(0.0, 0.6)", "loss=choice(ns,hinge)"])
    ends = {item for job in search.jobs for item in job}
    assert ends == {"dropout=0.0", f"dropout={math.nextafter(0.6, 0.0)}", "loss=ns", "loss=hinge"}
    assert search.label(search.jobs[1]) == f"the sweep's job dropout={math.nextafter(0.6, 0.0)} (from dropout=interval(0.0, 0.6))"

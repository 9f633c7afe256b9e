"""The sweep's closing lines: what its summary holds (a heatmap only where one was drawn), and the best
setting with its score at the score registry's precision and, over seeds, its 95% interval."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunData, RunInfo

from ganlab.sweeps import seed_stats
from ganlab.sweeps.ranking import SweepSummary
from ganlab.sweeps.sweep import best_line, summary_contents


def job(run_id: str, dropout: str, seed: str, fid: float) -> Run:
    info = RunInfo(run_id=run_id, experiment_id="1", user_id="", status="FINISHED", start_time=int(time.time() * 1000),
                   end_time=None, lifecycle_stage="active", run_name=run_id)
    data = RunData(metrics=[Metric("fid", fid, 0, 1)], params=[Param("dropout", dropout), Param("seed", seed)])
    return Run(info, data)


def test_the_best_setting_with_its_interval_over_seeds():
    runs = [job("a0", "0.1", "0", 100.0), job("a1", "0.1", "1", 110.0), job("a2", "0.1", "2", 105.0),
            job("b0", "0.3", "0", 150.0)]
    summary = SweepSummary(best=runs[0], best_metric="fid", keys=["dropout", "seed"], ranked=runs)
    found = seed_stats.summarize([100.0, 110.0, 105.0])
    assert 100 < found.ci_high < 1000  # so the line gives all three numbers one decimal, as fid's 4 digits do there
    assert best_line(summary) == (f"best setting: dropout=0.1: fid 105.0 (95% interval {found.ci_low:.1f} to "
                                  f"{found.ci_high:.1f} over 3 seeds; lower is better)")


def test_one_run_says_it_has_no_interval_and_no_best_no_line():
    runs = [job("a", "0.1", "0", 97.25), job("b", "0.3", "0", 120.0)]
    line = best_line(SweepSummary(best=runs[0], best_metric="fid", keys=["dropout"], ranked=runs))
    assert line == "best setting: dropout=0.1: fid 97.25 (one run, so no interval: sweep seed too; lower is better)"
    assert best_line(SweepSummary(best=None, best_metric=None, keys=["dropout"], ranked=runs)) is None


def test_a_seed_that_scored_inf_leaves_the_best_setting_without_an_interval():
    runs = [job("a0", "0.1", "0", float("inf")), job("a1", "0.1", "1", 100.0), job("b0", "0.3", "0", float("inf"))]
    line = best_line(SweepSummary(best=runs[1], best_metric="fid", keys=["dropout", "seed"], ranked=runs))
    assert line == "best setting: dropout=0.1: fid inf (over 2 seeds; a seed scored inf, so no interval; lower is better)"


def test_the_summary_line_names_a_heatmap_only_where_one_was_drawn():
    assert summary_contents(SweepSummary(files=[Path("sweep_summary.csv")])) == "table"
    drawn = SweepSummary(files=[Path("sweep_summary.csv"), Path("sweep_heatmap_fid.png"), Path("comparison.csv")],
                         montage=Path("sweep_samples.png"))
    assert summary_contents(drawn) == "table, heatmap, samples, seed comparison"

"""The settle design (ganlab.sweeps.settle) on synthetic normal scores with known differences.

Thousands of simulated questions (a reference and two settings each, true differences of 0,
+-margin/2 and +-2 margin, unequal variances), run through the same functions the sweeper
uses: pilot, seeds planned, interval, verdict. Checked: the k intervals of a question cover
together with probability at least 1 - alpha (within Monte-Carlo error), every verdict agrees
with the truth at that rate, no setting ever gets more than max_seeds, and without the cap no
comparison is left undecided. Vectorised: seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ganlab.sweeps import settle

MARGIN, ALPHA, PILOT = 1.0, 0.1, 5
DIFFERENCES = np.array([0.0, MARGIN / 2, -MARGIN / 2, 2 * MARGIN, -2 * MARGIN])
# (reference, setting a, setting b) standard deviations: equal, and unequal both ways
SPREADS = np.array([[0.3, 0.3, 0.3], [0.15, 0.45, 0.3], [0.45, 0.15, 0.25], [0.2, 0.5, 0.1]])


def simulate(questions: int, max_seeds: int, better: str, seed: int):
    """(true differences, pilot-based plan, lows, highs, verdicts) of `questions` questions of 3 settings each."""
    rng = np.random.default_rng(seed)
    k = 2  # two settings against the reference
    truth = np.stack([DIFFERENCES[np.arange(questions) % 5], DIFFERENCES[(np.arange(questions) // 5) % 5]], axis=1)
    sigma = SPREADS[np.arange(questions) % len(SPREADS)]  # (Q, 3)
    means = np.concatenate([np.zeros((questions, 1)), truth], axis=1)
    draws = means[:, :, None] + sigma[:, :, None] * rng.standard_normal((questions, 3, max_seeds))
    h = settle.critical_value(PILOT, ALPHA, k)
    pilot_std = draws[:, :, :PILOT].std(axis=2, ddof=1)
    n = settle.seeds_planned(pilot_std, MARGIN, h, PILOT, max_seeds)  # (Q, 3)
    uncapped = settle.seeds_needed(pilot_std, MARGIN, h, PILOT) <= max_seeds
    taken = np.arange(max_seeds)[None, None, :] < n[:, :, None]
    final_mean = (draws * taken).sum(axis=2) / n
    diff = final_mean[:, 1:] - final_mean[:, :1]
    width = settle.half_width(h, pilot_std[:, 1:], n[:, 1:], pilot_std[:, :1], n[:, :1])
    low, high = diff - width, diff + width
    verdict = settle.verdicts(low, high, MARGIN, better)
    decided_by_design = uncapped[:, 1:] & uncapped[:, :1]
    return truth, n, width, low, high, verdict, decided_by_design


def monte_carlo_floor(rate: float, questions: int) -> float:
    return rate - 3 * math.sqrt(rate * (1 - rate) / questions)


@pytest.mark.parametrize("better", [settle.LOWER, settle.HIGHER])
def test_intervals_cover_and_verdicts_agree_with_the_truth(better):
    questions = 3000
    truth, n, width, low, high, verdict, decided = simulate(questions, max_seeds=40, better=better, seed=1)
    covered = ((low <= truth) & (truth <= high)).all(axis=1)
    right = settle.consistent(verdict, truth, MARGIN, better).all(axis=1)
    assert covered.mean() >= monte_carlo_floor(1 - ALPHA, questions)
    assert right.mean() >= monte_carlo_floor(1 - ALPHA, questions)
    assert n.max() <= 40 and n.min() >= PILOT
    # Without the cap the design keeps its promise: half-width at most margin / 2 and a verdict for every question.
    assert decided.mean() > 0.95
    assert (width[decided] <= MARGIN / 2 + 1e-12).all()
    assert not (verdict[decided] == settle.UNDECIDED).any()
    # A difference of 2 margins is found, the right way round; none of 0 is called better or worse wrongly often.
    big = np.abs(truth) == 2 * MARGIN
    expected = np.where((truth < 0) == (better == settle.LOWER), settle.BETTER, settle.WORSE)
    assert (verdict[big & decided] == expected[big & decided]).mean() >= monte_carlo_floor(1 - ALPHA, big.sum())
    none = truth == 0
    assert (verdict[none & decided] == settle.EQUIVALENT).mean() >= monte_carlo_floor(1 - ALPHA, none.sum())


def test_a_tight_budget_never_exceeds_max_seeds_and_leaves_questions_undecided_rather_than_wrong():
    questions = 2000
    truth, n, width, low, high, verdict, decided = simulate(questions, max_seeds=7, better=settle.LOWER, seed=2)
    assert n.max() <= 7
    assert (~decided).mean() > 0.5  # the cap bites
    assert (verdict == settle.UNDECIDED).any()
    covered = ((low <= truth) & (truth <= high)).all(axis=1)  # the interval stays valid, only wider
    assert covered.mean() >= monte_carlo_floor(1 - ALPHA, questions)
    assert settle.consistent(verdict, truth, MARGIN, settle.LOWER).all(axis=1).mean() >= monte_carlo_floor(1 - ALPHA, questions)


def test_critical_value_matches_the_difference_of_two_t_variables():
    rng = np.random.default_rng(3)
    draws = rng.standard_t(2, size=(2, 100_000))
    assert settle.critical_value(3, 0.05) == pytest.approx(np.quantile(np.abs(draws[0] - draws[1]), 0.95), rel=0.04)
    assert settle.critical_value(2, 0.05) == pytest.approx(2 * math.tan(0.475 * math.pi))
    assert settle.critical_value(3, 0.05, 3) > settle.critical_value(3, 0.05, 1)  # Bonferroni over 3 comparisons


def test_compare_uses_the_pilot_spread_and_says_what_a_fixed_design_needs():
    values = {"ref": [10.0, 12.0, 11.0, 11.5], "far": [30.0, 31.0, 29.0, 30.5], "near": [10.5, 11.5, 11.0, 11.0]}
    rows = {row["setting"]: row for row in settle.compare(values, "ref", margin=5.0, alpha=0.05, pilot_seeds=3,
                                                          max_seeds=20, better=settle.LOWER)}
    h = settle.critical_value(3, 0.05, 2)
    pilot = np.std(values["far"][:3], ddof=1)  # the fourth score does not enter the width
    assert rows["far"]["half_width"] == pytest.approx(h * max(pilot / 2, np.std(values["ref"][:3], ddof=1) / 2))
    assert rows["far"]["verdict"] == settle.WORSE  # fid-like: higher is worse
    assert rows["near"]["verdict"] in (settle.EQUIVALENT, settle.UNDECIDED)
    assert rows["far"]["fixed_seeds"] >= 2 and rows["far"]["seeds"] == 4


def test_an_infinite_score_leaves_its_comparison_undecided_saying_why_and_plans_no_more_seeds():
    """fid_class_worst is inf when a generator leaves a class out: no spread and no interval exist, so no
    number of seeds settles the comparison; nothing overflows or warns on the way."""
    import warnings

    from ganlab.sweeps import settle_report

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(settle.sample_std([3.0, math.inf])) and settle.sample_std([3.0, 5.0]) == pytest.approx(math.sqrt(2))
        assert int(settle.seeds_planned(math.nan, MARGIN, 3.0, PILOT, 20, available=PILOT)) == PILOT
        rows = settle.compare({"ref": [1.0, 2.0, 1.5], "a": [math.inf, 2.0, 1.0], "b": [1.1, 1.2, 1.3]}, "ref", MARGIN,
                              ALPHA, 3, 20, settle.LOWER)
        inf_ref = settle.compare({"ref": [math.inf, 2.0, 1.5], "a": [1.0, 2.0, 1.0]}, "ref", MARGIN, ALPHA, 3, 20, settle.LOWER)
    a, b = rows
    assert a["verdict"] == settle.UNDECIDED and a["diff"] == math.inf and math.isnan(a["low"]) and a["seeds_needed"] is None
    assert a["why"] == "the setting scored inf on a seed: no interval exists"
    assert math.isfinite(b["low"]) and b["seeds_needed"] >= 3 and b["why"] != a["why"]  # a finite one is compared as before
    assert inf_ref[0]["why"] == "the reference scored inf on a seed: no interval exists" and inf_ref[0]["diff"] == -math.inf

    class Question:
        metric, epoch, margin, alpha, max_seeds, reference = "fid_class_worst", 1, MARGIN, ALPHA, 20, "ref"

        @staticmethod
        def label(setting):
            return setting

    text = settle_report.markdown(Question, rows, {})
    assert "| a | **undecided** (the setting scored inf on a seed: no interval exists) | +inf (no interval) |" in text

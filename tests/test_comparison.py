"""Seed-noise comparison: every number checked against SciPy computed here, independently; the
record it reads; the reference setting read from the config; the report naming what it cannot download."""

from __future__ import annotations

import csv
import math
import re
import shutil
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from scipy import stats

from conftest import REPO, new_store
from ganlab.sweeps import comparison
from ganlab.core import defaults
from ganlab.core import record
from ganlab import report
from ganlab.sweeps import seed_stats
from ganlab.core.record import Observation

PNG = b"\x89PNG\r\n\x1a\n"
HEADER = "group,metric,epoch,n,mean,std,ci_low,ci_high,diff,diff_ci_low,diff_ci_high,p_value,seeds_needed,q_value"

REFERENCE = [10.0, 12.0, 14.0]  # dropout=0.3
CLEARLY_HIGHER = [20.0, 21.0, 25.0, 22.0]  # dropout=0.5
NOT_CLEARLY_DIFFERENT = [9.0, 15.0, 11.0, 14.0]  # dropout=0.0


def observations(values_by_dropout: dict[str, list[float]], metric: str = "fid", epoch: int = 10):
    return [Observation({"dropout": dropout}, str(seed), metric, epoch, value)
            for dropout, values in values_by_dropout.items() for seed, value in enumerate(values)]


def three_groups(metric: str = "fid", epoch: int = 10):
    return observations({"0.0": NOT_CLEARLY_DIFFERENT, "0.3": REFERENCE, "0.5": CLEARLY_HIGHER}, metric, epoch)


def welch_by_hand(a, b):
    """Welch's difference, interval and p-value, with the Welch–Satterthwaite df written out."""
    a, b = np.array(a), np.array(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = a.mean() - b.mean()
    low, high = stats.t.interval(0.95, df, loc=diff, scale=math.sqrt(va + vb))
    return diff, low, high, stats.ttest_ind(a, b, equal_var=False).pvalue


def power_by_hand(d, n, alpha=0.05):
    df, noncentrality = 2 * n - 2, d * math.sqrt(n / 2)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)


def test_group_label_follows_by_order():
    group = {"label_smoothing": "0.1", "dropout": "0.5"}
    assert comparison.group_label(group) == "label_smoothing=0.1 dropout=0.5"
    assert comparison.group_label(group, by=["dropout", "label_smoothing"]) == "dropout=0.5 label_smoothing=0.1"


def test_summarize_matches_student_t_interval():
    summary = seed_stats.summarize(REFERENCE)
    low, high = stats.t.interval(0.95, 2, loc=12.0, scale=stats.sem(REFERENCE))
    assert summary.n == 3 and summary.mean == pytest.approx(12.0)
    assert summary.std == pytest.approx(2.0)  # ddof=1: sqrt((4 + 0 + 4) / 2)
    assert summary.ci_low == pytest.approx(low) and summary.ci_high == pytest.approx(high)
    assert summary.ci_low == pytest.approx(12.0 - 4.302652729 * 2.0 / math.sqrt(3))  # t(0.975, 2) from a table


def test_summarize_single_seed_has_no_spread():
    summary = seed_stats.summarize([7.5])
    assert summary.n == 1 and summary.mean == 7.5
    assert math.isnan(summary.std) and math.isnan(summary.ci_low) and math.isnan(summary.ci_high)


def test_summarize_an_infinite_seed_has_no_spread_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value" on inf - inf would be console noise
        summary = seed_stats.summarize([3.0, math.inf, 5.0])
    assert summary.n == 3 and summary.mean == math.inf
    assert math.isnan(summary.std) and math.isnan(summary.ci_low) and math.isnan(summary.ci_high)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        against = seed_stats.welch([3.0, math.inf, 5.0], [4.0, 6.0, 8.0])
        both = seed_stats.welch([3.0, math.inf], [math.inf, 6.0])
    assert against.diff == math.inf and math.isnan(against.ci_low) and math.isnan(against.p_value)
    assert math.isnan(both.diff) and math.isnan(both.ci_high)


def test_an_infinite_score_reads_back_from_the_store_as_inf_and_the_sweep_summary_says_so(tmp_path):
    """MLflow's SQLite store keeps inf as the largest float; read back as a number, two of them overflow a mean
    and a mixed group gets an interval. Read through ganlab.tracking it is inf again, end to end."""
    from ganlab.sweeps import settle_store, summary as sweep_summary
    from ganlab.tracking import store as tracking

    client, experiment = tracking.open_store(new_store(tmp_path / "mlflow.db"), "ganlab")
    parent = client.create_run(experiment, tags={tracking.SWEEP_PARENT_TAG: "true"}).info.run_id
    worst = {("0.1", "0"): math.inf, ("0.1", "1"): math.inf, ("0.3", "0"): 250.0, ("0.3", "1"): math.inf}
    for job, ((dropout, seed), value) in enumerate(worst.items()):
        run = client.create_run(experiment, tags={tracking.PARENT_RUN_TAG: parent, tracking.JOB_NUM_TAG: str(job)}).info.run_id
        client.log_param(run, "dropout", dropout)
        client.log_param(run, "seed", seed)
        client.log_metric(run, "fid", 100.0 + job, step=1)
        client.log_metric(run, "fid_class_worst", value, step=1)
        client.set_terminated(run, "FINISHED")

    _, children = tracking.sweep_children(client, experiment, parent)
    assert [child.data.metrics["fid_class_worst"] for child in children] == list(worst.values())
    first = children[0].info.run_id
    assert tracking.metric_histories(client, first, ["fid_class_worst"]) == {"fid_class_worst": {1: math.inf}}
    assert settle_store.score_at(client, first, "fid_class_worst", 1) == math.inf
    assert tracking.as_logged(-sys.float_info.max) == -math.inf and tracking.as_logged(1e308) == 1e308

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflowing mean, inf - inf: console noise and wrong numbers
        sweep_summary.summarize(client, children, ["dropout", "seed"], "fid", tmp_path / "summary")
    with open(tmp_path / "summary" / "comparison.csv") as stream:
        rows = {(row["group"], row["metric"]): row for row in csv.DictReader(stream)}
    infinite = rows[("dropout=0.1", "fid_class_worst")]
    assert float(infinite["mean"]) == math.inf and infinite["ci_low"] in ("", "nan")
    assert float(rows[("dropout=0.3", "fid_class_worst")]["mean"]) == math.inf  # not 250 and a largest float, halved
    assert float(rows[("dropout=0.3", "fid")]["mean"]) == 102.5
    assert "e+308" not in (tmp_path / "summary" / "sweep_summary.csv").read_text()
    table = (tmp_path / "summary" / "comparison.md").read_text()
    assert "| dropout=0.1 | 1 | 2 | inf ± n/a | nan |  |  |  | a seed scored inf: no interval |" in table
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert report.main(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--by", "dropout", "--metrics",
                            "fid,fid_class_worst", "--epochs", "1", "--out", str(tmp_path / "report")]) == 0
    assert "| 1 | 102 ± 0.71 | inf ± n/a |" in (tmp_path / "report" / "scores.md").read_text()  # dropout=0.3


def test_welch_matches_scipy():
    difference = seed_stats.welch(CLEARLY_HIGHER, REFERENCE)
    diff, low, high, p_value = welch_by_hand(CLEARLY_HIGHER, REFERENCE)
    assert difference.diff == pytest.approx(10.0) == pytest.approx(diff)
    assert difference.ci_low == pytest.approx(low) and difference.ci_high == pytest.approx(high)
    assert difference.p_value == pytest.approx(p_value)
    assert 0 < difference.ci_low < 10 < difference.ci_high


def test_welch_on_nearly_identical_seeds_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "Precision loss occurred" would reach the console
        difference = seed_stats.welch([1.0, 1.0 + 2e-16, 1.0], [2.0, 3.0, 4.0])
    assert 0 < difference.p_value < 1


def test_welch_is_nan_without_a_noise_estimate():
    one_seed = seed_stats.welch([5.0], REFERENCE)
    assert one_seed.diff == pytest.approx(-7.0)
    assert all(math.isnan(x) for x in (one_seed.ci_low, one_seed.ci_high, one_seed.p_value))
    no_spread = seed_stats.welch([3.0, 3.0], [4.0, 4.0, 4.0])
    assert no_spread.diff == pytest.approx(-1.0)
    assert all(math.isnan(x) for x in (no_spread.ci_low, no_spread.ci_high, no_spread.p_value))


def test_seeds_needed_textbook_values():
    assert seed_stats.seeds_needed(1.0, 1.0, 1.0) == 17  # d = 1, two-sided alpha 0.05, power 0.8
    assert seed_stats.seeds_needed(-0.5, 1.0, 1.0) == 64  # d = 0.5; the sign does not matter


@pytest.mark.parametrize("diff, std_a, std_b", [(10.0, 2.0, 2.16), (3.0, 5.0, 2.0), (0.7, 1.5, 0.4), (25.0, 1.0, 2.0)])
def test_seeds_needed_is_the_smallest_n_with_enough_power(diff, std_a, std_b):
    n = seed_stats.seeds_needed(diff, std_a, std_b)
    d = abs(diff) / math.sqrt((std_a**2 + std_b**2) / 2)
    assert n >= 2 and power_by_hand(d, n) >= 0.8
    if n > 2:
        assert power_by_hand(d, n - 1) < 0.8


def test_seeds_needed_none_when_it_cannot_be_estimated():
    assert seed_stats.seeds_needed(0.0, 1.0, 1.0) is None
    assert seed_stats.seeds_needed(math.nan, 1.0, 1.0) is None
    assert seed_stats.seeds_needed(1.0, math.nan, 1.0) is None
    assert seed_stats.seeds_needed(0.01, 1.0, 1.0) is None  # would need ~157,000 per group
    assert seed_stats.seeds_needed(1.0, 1.0, 1.0, max_seeds=16) is None


def test_compare_every_column_against_scipy():
    rows = comparison.compare(three_groups(), by=["dropout"], reference={"dropout": "0.3"})
    assert [field for field in comparison.ComparisonRow.__dataclass_fields__] == HEADER.split(",")
    assert [row.group for row in rows] == ["dropout=0.3", "dropout=0.0", "dropout=0.5"]  # reference first
    reference, unclear, clear = rows
    assert (reference.diff, reference.diff_ci_low, reference.diff_ci_high, reference.p_value, reference.seeds_needed,
            reference.q_value) == (None,) * 6
    for row, values in ((reference, REFERENCE), (unclear, NOT_CLEARLY_DIFFERENT), (clear, CLEARLY_HIGHER)):
        low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        assert (row.metric, row.epoch, row.n) == ("fid", 10, len(values))
        assert row.mean == pytest.approx(np.mean(values)) and row.std == pytest.approx(np.std(values, ddof=1))
        assert row.ci_low == pytest.approx(low) and row.ci_high == pytest.approx(high)
    for row, values in ((unclear, NOT_CLEARLY_DIFFERENT), (clear, CLEARLY_HIGHER)):
        diff, low, high, p_value = welch_by_hand(values, REFERENCE)
        assert row.diff == pytest.approx(diff) and row.p_value == pytest.approx(p_value)
        assert row.diff_ci_low == pytest.approx(low) and row.diff_ci_high == pytest.approx(high)
    assert clear.diff_ci_low > 0 and unclear.diff_ci_low < 0 < unclear.diff_ci_high
    d = 10.0 / math.sqrt((np.var(CLEARLY_HIGHER, ddof=1) + np.var(REFERENCE, ddof=1)) / 2)
    assert power_by_hand(d, clear.seeds_needed) >= 0.8 > power_by_hand(d, clear.seeds_needed - 1)
    assert unclear.seeds_needed is None  # d = 0.10 would need about 1,450 seeds per group, past the cap


def test_compare_orders_metrics_then_epochs_and_skips_missing_reference():
    data = (three_groups("precision", 5) + three_groups("fid", 5) + three_groups("fid", 1)
            + observations({"0.5": [0.4, 0.5]}, "precision", 9))  # no reference at epoch 9
    rows = comparison.compare(data, by=["dropout"], reference={"dropout": "0.30"})  # numeric match
    assert [(row.metric, row.epoch) for row in rows] == (
        [("precision", 5)] * 3 + [("precision", 9)] + [("fid", 1)] * 3 + [("fid", 5)] * 3)
    lonely = rows[3]
    assert lonely.group == "dropout=0.5" and lonely.n == 2 and lonely.diff is None and lonely.seeds_needed is None
    only_fid = comparison.compare(data, by=["dropout"], reference=None, metrics=["fid"], epochs=[5])
    assert [(row.metric, row.epoch) for row in only_fid] == [("fid", 5)] * 3
    assert all(row.diff is None for row in only_fid)


def test_grouping_by_fewer_keys_refuses_to_pool_other_settings_as_seeds():
    grid = {("0.3", "0.0"): [10.0, 12.0, 14.0], ("0.3", "0.1"): [11.0, 13.0, 16.0], ("0.5", "0.0"): [20.0, 21.0, 25.0]}
    data = [Observation({"dropout": dropout, "label_smoothing": ls}, str(seed), "fid", 10, value)
            for (dropout, ls), values in grid.items() for seed, value in enumerate(values)]
    with pytest.raises(comparison.PooledKeys, match=r"^the group dropout=0.3 holds runs at 2 values of label_smoothing "
                                                    r"\(0.0, 0.1\).*Group by label_smoothing too \(dropout, label_smoothing\)"):
        comparison.compare(data, by=["dropout"], reference={"dropout": "0.3"})
    full = comparison.compare(data, by=["dropout", "label_smoothing"], reference={"dropout": "0.3", "label_smoothing": "0.0"})
    assert [row.n for row in full] == [3, 3, 3]


def test_a_key_that_follows_the_grouping_key_is_not_pooling():
    """loss.n_critic differs between losses but not inside one: a property of the group, not a replicate."""
    data = [Observation({"loss.name": name, "loss.n_critic": critic}, str(seed), "fid", 10, value + offset)
            for name, critic, offset in (("ns", "1", 0.0), ("wgan_gp", "5", 10.0)) for seed, value in enumerate(REFERENCE)]
    rows = comparison.compare(data, by=["loss.name"], reference={"loss.name": "ns"})
    assert [(row.group, row.n) for row in rows] == [("loss.name=ns", 3), ("loss.name=wgan_gp", 3)]


def test_record_round_trip_gives_the_same_rows_to_the_last_bit(tmp_path):
    data = [Observation({"dropout": o.group["dropout"], "label_smoothing": "0.1"}, o.seed, o.metric, o.epoch, o.value / 7)
            for o in three_groups() + three_groups("recall", 5)]
    path = record.write_observations(data, ["dropout", "label_smoothing"], tmp_path / "runs.csv")
    assert path.read_text().splitlines()[0] == "dropout,label_smoothing,seed,epoch,metric,value"
    read, keys = record.read_observations(path)
    assert keys == ["dropout", "label_smoothing"] and read == data
    reference = {"dropout": "0.3"}
    assert comparison.compare(read, ["dropout"], reference) == comparison.compare(data, ["dropout"], reference)


@pytest.mark.parametrize(("text", "expected"), [
    ("dropout,seed,metric,value\n", "a record's columns are the grouping keys, then seed,epoch,metric,value"),
    ("dropout,seed,epoch,metric,value\n0.3,0,ten,fid,1.0\n", "line 2: expected 5 cells"),
    ("dropout,seed,epoch,metric,value\n0.3,0,10,fid\n", "line 2: expected 5 cells"),
])
def test_a_bad_record_is_refused_with_file_and_line(tmp_path, text, expected):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path)) as error:
        record.read_observations(path)
    assert expected in str(error.value)


def test_compare_single_seed_group_gives_nan_not_zero():
    data = three_groups() + observations({"0.7": [30.0]})
    row = comparison.compare(data, by=["dropout"], reference={"dropout": "0.3"})[-1]
    assert row.group == "dropout=0.7" and row.n == 1 and row.diff == pytest.approx(18.0)
    assert all(math.isnan(x) for x in (row.std, row.ci_low, row.ci_high, row.diff_ci_low, row.diff_ci_high, row.p_value))
    assert row.seeds_needed is None


def test_compare_unknown_reference_names_it_and_the_groups():
    with pytest.raises(ValueError) as error:
        comparison.compare(three_groups(), by=["dropout"], reference={"dropout": "0.9"})
    message = str(error.value)
    assert "dropout=0.9" in message
    assert "dropout=0.0" in message and "dropout=0.3" in message and "dropout=0.5" in message


def test_default_reference_is_the_tutorial_setting():
    groups = [{"dropout": "0.10", "label_smoothing": "0.0"}, {"dropout": "0.30", "label_smoothing": "0.1"}]
    assert comparison.default_reference(groups, ["dropout", "label_smoothing"]) == groups[1]
    assert comparison.default_reference([{"dropout": "0.3"}, {"dropout": "0.5"}], ["dropout"]) == {"dropout": "0.3"}
    assert comparison.default_reference([{"dropout": "0.5"}], ["dropout"]) is None  # not swept at 0.3
    assert comparison.default_reference([{"lr": "0.3"}], ["lr"]) is None  # not a knob of the config
    lr = [{"optimizer.lr": "0.001"}, {"optimizer.lr": "2e-4"}]  # a group's default counts too
    assert comparison.default_reference(lr, ["optimizer.lr"]) == lr[1]


def test_the_reference_setting_is_the_config_not_python():
    primary = OmegaConf.load(REPO / "conf" / "train.yaml")
    adam = OmegaConf.load(REPO / "conf" / "optimizer" / "adam.yaml")
    setting = defaults.config_defaults()
    assert setting["dropout"] == str(primary.dropout) and setting["label_smoothing"] == str(primary.label_smoothing)
    assert setting["optimizer.lr"] == str(adam.lr) and "ema" not in setting  # a null default names no group
    groups = [{"dropout": "0.3"}, {"dropout": "0.5"}]
    assert comparison.default_reference(groups, ["dropout"], {"dropout": "0.5"}) == {"dropout": "0.5"}
    assert comparison.default_reference(groups, ["dropout"], {}) is None


def test_the_config_defaults_are_what_hydra_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        composed = OmegaConf.to_container(compose(config_name="train"), resolve=False)
    GlobalHydra.instance().clear()

    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            elif value is not None and not isinstance(value, list):
                yield f"{prefix}{key}", str(value)

    assert defaults.config_defaults() == dict(flat(composed))


def test_a_config_with_other_defaults_gives_another_reference(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    primary = (conf / "train.yaml").read_text()
    (conf / "train.yaml").write_text(re.sub(r"^dropout: \S+", "dropout: 0.5", primary, flags=re.MULTILINE))
    (conf / "optimizer" / "adam.yaml").write_text("name: adam\nlr: 1.0e-3\nbeta_1: 0.5\n")
    setting = defaults.config_defaults(conf)
    assert setting["dropout"] == "0.5" and setting["optimizer.lr"] == "0.001"
    groups = [{"dropout": "0.3"}, {"dropout": "0.5"}]
    assert comparison.default_reference(groups, ["dropout"], setting) == {"dropout": "0.5"}


def test_a_sample_grid_that_cannot_be_downloaded_is_named(tmp_path, capsys):
    class Store:
        def list_artifacts(self, run_id, path=None):
            return [SimpleNamespace(path=f"samples/epoch_{epoch:03d}.png", is_dir=False) for epoch in (1, 5)]

        def download_artifacts(self, run_id, path, folder):
            raise OSError(f"connection reset while fetching {path}")

    run = SimpleNamespace(info=SimpleNamespace(run_id="run7"), data=SimpleNamespace(params={"dropout": "0.3"}, tags={}))
    report.write_sample_montages(Store(), {"dropout=0.3": [run]}, ["dropout"], [1, 5, 10], tmp_path)
    error = capsys.readouterr().err
    assert "warning: could not download artifact samples/epoch_001.png of run run7 (OSError: connection reset" in error
    assert "samples/epoch_005.png" in error and "epoch_010" not in error  # epoch 10 was never logged: no warning
    assert not list(tmp_path.glob("*.png"))


def test_csv_header_values_and_empty_reference_cells(tmp_path):
    data = three_groups() + observations({"0.7": [30.0]})
    rows = comparison.compare(data, by=["dropout"], reference={"dropout": "0.3"})
    path = comparison.write_csv(rows, tmp_path / "out" / "comparison.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    assert lines[1].startswith("dropout=0.3,fid,10,3,12.0,2.0,") and lines[1].endswith(",,,,,")
    table = list(csv.DictReader(path.open()))
    clear = next(record for record in table if record["group"] == "dropout=0.5")
    assert float(clear["diff_ci_low"]) == rows[2].diff_ci_low  # full precision survives the round trip
    assert float(clear["p_value"]) == rows[2].p_value and int(clear["seeds_needed"]) == rows[2].seeds_needed
    single = next(record for record in table if record["group"] == "dropout=0.7")
    assert single["std"] == "nan" and single["p_value"] == "nan" and single["seeds_needed"] == ""


def test_markdown_marks_only_the_clear_difference(tmp_path):
    rows = comparison.compare(three_groups(), by=["dropout"], reference={"dropout": "0.3"})
    text = comparison.write_markdown(rows, tmp_path / "comparison.md", {"fid": "lower"}).read_text()
    assert text.splitlines()[0].startswith("Each row is")  # the legend comes first
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| dropout=")}
    assert "**clear**: higher (worse)" in lines["| dropout=0.5"]
    assert "no clear difference" in lines["| dropout=0.0"] and "clear**" not in lines["| dropout=0.0"]
    assert "reference" in lines["| dropout=0.3"] and "clear" not in lines["| dropout=0.3"]
    without_direction = comparison.write_markdown(rows, tmp_path / "plain.md").read_text()
    assert "**clear**: higher |" in without_direction and "worse" not in without_direction


def bh_by_hand(p_values):
    """Benjamini–Hochberg: q of the i-th smallest of m is min over j >= i of p_(j) * m / j."""
    order = np.argsort(p_values)
    m, q, running = len(p_values), np.empty(len(p_values)), 1.0
    for rank in range(m, 0, -1):
        running = min(running, p_values[order[rank - 1]] * m / rank)
        q[order[rank - 1]] = running
    return q


def test_q_adjusts_within_each_metric_and_epoch(tmp_path):
    data = three_groups(epoch=10) + observations({"0.7": [16.0, 19.0, 13.0]}, epoch=10) + three_groups("recall", 5)
    rows = comparison.compare(data, by=["dropout"], reference={"dropout": "0.3"})
    q_values = comparison.false_discovery_q(rows)
    for metric, epoch in (("fid", 10), ("recall", 5)):
        family = [index for index, row in enumerate(rows) if (row.metric, row.epoch) == (metric, epoch) and row.diff is not None]
        expected = bh_by_hand([rows[index].p_value for index in family])
        assert [q_values[index] for index in family] == pytest.approx(list(expected))
        assert all(q_values[index] >= rows[index].p_value for index in family)
    assert len([q for q in q_values if q is not None]) == 3 + 2  # three groups at fid, two at recall
    assert all(q is None for row, q in zip(rows, q_values) if row.diff is None)
    text = comparison.write_markdown(rows, tmp_path / "comparison.md", {"fid": "lower"}).read_text()
    seven = next(line for line in text.splitlines() if line.startswith("| dropout=0.7 | 10"))
    cells = [cell.strip() for cell in seven.strip("|").split("|")]
    assert cells[6] == f"{q_values[[row.group for row in rows].index('dropout=0.7')]:.2g}"


def test_plot_is_a_png(tmp_path):
    data = three_groups(epoch=1) + three_groups(epoch=5) + observations({"0.7": [30.0]}, epoch=5)
    rows = comparison.compare(data, by=["dropout"], reference={"dropout": "0.3"})
    path = comparison.plot_metric(rows, "fid", tmp_path / "plots" / "fid.png")
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="precision"):
        comparison.plot_metric(rows, "precision", tmp_path / "none.png")


def test_sentence_says_what_is_clear_and_what_is_not():
    rows = comparison.compare(three_groups(), by=["dropout"], reference={"dropout": "0.3"})
    text = comparison.sentence(rows, "dropout", "fid", 10, "lower")
    _, low, high, _ = welch_by_hand(CLEARLY_HIGHER, REFERENCE)
    assert text.startswith("dropout: at epoch 10, fid shows no clear difference between dropout=0.0 and the reference dropout=0.3")
    assert f"dropout=0.5: clearly higher (worse) (+10, CI {low:.4g} to {high:.4g}, p=" in text
    assert f", q={rows[2].q_value:.2g})" in text  # the figure that decided is in the sentence
    assert comparison.sentence(rows, "dropout", "fid", 99, "lower") == "dropout: no fid values at epoch 99."
    with_single = comparison.compare(three_groups() + observations({"0.7": [30.0]}), by=["dropout"], reference={"dropout": "0.3"})
    assert comparison.sentence(with_single, "dropout", "fid", 10, "lower").endswith(
        "; dropout=0.7: too few seeds (or no spread) for an interval (+18).")
    only_single = comparison.compare(observations({"0.3": REFERENCE, "0.7": [30.0]}), by=["dropout"], reference={"dropout": "0.3"})
    assert comparison.sentence(only_single, "dropout", "fid", 10, "lower") == (
        "dropout: at epoch 10, fid cannot be compared between dropout=0.7 and the reference dropout=0.3: "
        "too few seeds (or no spread) for an interval (+18).")
    unreferenced = comparison.compare(three_groups(), by=["dropout"], reference=None)
    assert "no reference" in comparison.sentence(unreferenced, "dropout", "fid", 10, None)


def test_sentence_keeps_to_the_swept_key():
    data = [Observation({"dropout": d, "label_smoothing": s}, str(seed), "fid", 3, value + 10 * float(d) + 100 * float(s))
            for d in ("0.3", "0.5") for s in ("0.1", "0.2") for seed, value in enumerate(REFERENCE)]
    rows = comparison.compare(data, by=["dropout", "label_smoothing"], reference={"dropout": "0.3", "label_smoothing": "0.1"})
    text = comparison.sentence(rows, "label_smoothing", "fid", 3, "lower")
    assert text.startswith("label_smoothing: at epoch 3, fid is clearly higher (worse) with label_smoothing=0.2 "
                           "than the reference dropout=0.3 label_smoothing=0.1")
    assert "dropout=0.5" not in text


def test_module_needs_no_tensorflow_mlflow_or_hydra():
    code = ("import sys, ganlab.sweeps.comparison, ganlab.core.record, ganlab.sweeps.seed_stats; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow', 'hydra', 'omegaconf') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

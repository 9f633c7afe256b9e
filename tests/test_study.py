"""The published studies cannot drift from their records: the comparisons of docs/study (the
label-smoothing x dropout grid) and docs/study/losses (the loss study) are computed again from
their runs.csv alone, bit for bit, and every difference the docs quote is in them. The
baseline's record (docs/baseline/runs.csv) goes through the same reader."""

from __future__ import annotations

import csv
import re

import pytest

from conftest import REPO
from ganlab import report

STUDY = REPO / "docs" / "study"
LOSS_STUDY = STUDY / "losses"
SETTLE_STUDY = STUDY / "settle"
# Each published comparison: its folder, its record, and the report options that made it.
PUBLISHED = {
    ".": (STUDY, ["--by", "dropout,label_smoothing", "--reference", "dropout=0.3,label_smoothing=0.1"]),
    "losses": (LOSS_STUDY, ["--by", "loss", "--reference", "loss=ns"]),
    "settle": (SETTLE_STUDY, ["--by", "loss", "--reference", "loss=ns"]),
}
PAGES = [REPO / "README.md", REPO / "docs" / "sweeps.md", STUDY / "README.md", LOSS_STUDY / "README.md",
         SETTLE_STUDY / "README.md"]
# A quoted difference as comparison.md writes it: "+12.3 [4.56, 20.1]"
DIFFERENCE = re.compile(r"[+-]\d[\d.e+-]* \[-?\d[\d.e+-]*, -?\d[\d.e+-]*\]")


def folder_of(name: str):
    return PUBLISHED[name][0]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_published_comparison_is_its_record(name, tmp_path, capsys):
    study, options = PUBLISHED[name]
    record = study / "runs.csv"
    assert report.main(["--record", str(record), *options, "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    for file in ("comparison.csv", "comparison.md"):
        published = folder_of(name) / file
        assert (tmp_path / file).read_bytes() == published.read_bytes(), (
            f"{published.relative_to(REPO)} is not what its record gives; run: python -m ganlab.report --record "
            f"{record.relative_to(REPO)} {' '.join(options)} --out {published.parent.relative_to(REPO)}")


def test_the_study_has_nine_settings_of_three_seeds_or_more():
    with open(STUDY / "comparison.csv") as stream:
        rows = [row for row in csv.DictReader(stream) if row["metric"] == "fid"]
    last = max(int(row["epoch"]) for row in rows)
    final = {row["group"]: int(row["n"]) for row in rows if int(row["epoch"]) == last}
    assert last >= 10 and len(final) == 9 and min(final.values()) >= 3, final


def test_the_loss_study_compares_four_losses_of_three_seeds_or_more_with_ns():
    with open(LOSS_STUDY / "comparison.csv") as stream:
        rows = [row for row in csv.DictReader(stream) if row["metric"] == "fid"]
    last = max(int(row["epoch"]) for row in rows)
    final = {row["group"]: row for row in rows if int(row["epoch"]) == last}
    assert last >= 10 and set(final) == {f"loss.name={loss}" for loss in ("ns", "hinge", "lsgan", "wgan_gp")}
    assert min(int(row["n"]) for row in final.values()) >= 3
    assert final["loss.name=ns"]["diff"] == "" and all(row["diff"] for key, row in final.items() if key != "loss.name=ns")


def test_every_difference_the_docs_quote_is_in_a_published_comparison():
    published = "\n".join((folder_of(name) / "comparison.md").read_text() for name in PUBLISHED)
    quoted = [(page.name, quote) for page in PAGES for quote in DIFFERENCE.findall(study_section(page))]
    assert len(quoted) >= 3
    assert [(page, quote) for page, quote in quoted if quote not in published] == []


def study_section(page) -> str:
    """The parts of a page about the studies: all of a study's README.md, elsewhere each part from
    a heading that names a study to the next heading of the same level or above."""
    text = page.read_text()
    if page.parent in (STUDY, LOSS_STUDY, SETTLE_STUDY):
        return text
    parts = []
    for match in re.finditer(r"^(#+) .*study.*$", text, flags=re.MULTILINE | re.IGNORECASE):
        rest = text[match.end():]
        end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, flags=re.MULTILINE)
        parts.append(rest[: end.start()] if end else rest)
    assert parts, f"{page.name} has no section about a study"
    return "\n".join(parts)


def test_the_baseline_record_is_read_and_compared_like_the_study(tmp_path, capsys):
    """One reader for both published records: the baseline's runs.csv is a record grouped by
    dtype, and its default reference is the config's dtype (fp32)."""
    baseline = REPO / "docs" / "baseline" / "runs.csv"
    assert report.main(["--record", str(baseline), "--metrics", "fid", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    with open(tmp_path / "comparison.csv") as stream:
        rows = [row for row in csv.DictReader(stream)]
    assert {row["group"] for row in rows} == {"dtype=fp32", "dtype=bf16"}
    assert all(row["diff"] == "" for row in rows if row["group"] == "dtype=fp32")  # the reference
    assert all(row["diff"] != "" for row in rows if row["group"] == "dtype=bf16")


def test_grouping_the_grid_by_one_knob_is_refused_not_pooled(tmp_path, capsys):
    """The grid's record grouped by dropout alone would count label_smoothing's values as seeds: one line, exit 2."""
    code = report.main(["--record", str(STUDY / "runs.csv"), "--by", "dropout", "--reference", "dropout=0.3",
                        "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1, error
    assert error.startswith("error: --by: the group dropout=") and "3 values of label_smoothing" in error
    assert "(dropout, label_smoothing)" in error and not (tmp_path / "comparison.csv").exists()


def test_every_published_verdict_is_decided_by_q():
    """A row called clear has q < 0.05; a row whose unadjusted interval alone excludes 0 says so, and is not clear."""
    for name in PUBLISHED:
        with open(folder_of(name) / "comparison.csv") as stream:
            rows = {(row["group"], row["metric"], row["epoch"]): row for row in csv.DictReader(stream)}
        for line in (folder_of(name) / "comparison.md").read_text().splitlines():
            if not line.startswith("| "):
                continue
            if "**clear**" in line:
                assert float(line.split(" | ")[6].replace("<", "")) < 0.05, line
            if "(p < 0.05 alone)" in line:
                assert not line.split(" | ")[6].startswith("<") and float(line.split(" | ")[6]) >= 0.05, line
        assert all(row["q_value"] for row in rows.values() if row["p_value"] not in ("", "nan"))


def test_the_settle_studys_verdicts_are_its_record():
    """docs/study/settle/settle.csv is what Chapman's design (ganlab.sweeps.settle.compare) gives on the
    record's fid at epoch 10, seeds in order (the first three the pilot), with the study's terms."""
    from ganlab.core import record, scores
    from ganlab.sweeps import settle

    observations, _ = record.read_observations(SETTLE_STUDY / "runs.csv")
    values: dict[str, dict[int, float]] = {}
    for seen in observations:
        if seen.metric == scores.FID and seen.epoch == 10:
            values.setdefault(f"loss={seen.group['loss.name']}", {})[int(seen.seed)] = seen.value
    in_seed_order = {setting: [by_seed[seed] for seed in sorted(by_seed)] for setting, by_seed in values.items()}
    rows = settle.compare(in_seed_order, "loss=ns", margin=10, alpha=0.05, pilot_seeds=3, max_seeds=20,
                          better=scores.direction(scores.FID))
    with open(SETTLE_STUDY / "settle.csv") as stream:
        published = {row["setting"]: row for row in csv.DictReader(stream)}
    assert set(published) == {row["setting"] for row in rows} == {"loss=hinge", "loss=lsgan", "loss=wgan_gp"}
    for row in rows:
        shown = published[row["setting"]]
        assert shown["verdict"] == row["verdict"] and int(shown["seeds"]) == row["seeds"] == 20, (shown, row)
        assert float(shown["low"]) == row["low"] and float(shown["high"]) == row["high"], (shown, row)
        assert int(shown["fixed_seeds"]) == row["fixed_seeds"], (shown, row)

"""The published study cannot drift from its record: docs/study's comparisons are computed again
from docs/study/runs.csv alone, bit for bit, and every difference the docs quote is in them. The
baseline's record (docs/baseline/runs.csv) goes through the same reader."""

from __future__ import annotations

import csv
import re

import pytest

from conftest import REPO
from ganlab import report

STUDY = REPO / "docs" / "study"
RECORD = STUDY / "runs.csv"
# Each published comparison: its folder under docs/study and the report options that made it.
PUBLISHED = {
    ".": ["--by", "dropout,label_smoothing", "--reference", "dropout=0.3,label_smoothing=0.1"],
    "dropout": ["--by", "dropout", "--reference", "dropout=0.3"],
    "label_smoothing": ["--by", "label_smoothing", "--reference", "label_smoothing=0.1"],
}
PAGES = [REPO / "README.md", REPO / "docs" / "sweeps.md", STUDY / "README.md"]
# A quoted difference as comparison.md writes it: "+12.3 [4.56, 20.1]"
DIFFERENCE = re.compile(r"[+-]\d[\d.e+-]* \[-?\d[\d.e+-]*, -?\d[\d.e+-]*\]")


@pytest.mark.parametrize("folder", sorted(PUBLISHED))
def test_each_published_comparison_is_its_record(folder, tmp_path, capsys):
    assert report.main(["--record", str(RECORD), *PUBLISHED[folder], "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    for name in ("comparison.csv", "comparison.md"):
        assert (tmp_path / name).read_bytes() == (STUDY / folder / name).read_bytes(), (
            f"docs/study/{folder}/{name} is not what its record gives; run: python -m ganlab.report "
            f"--record docs/study/runs.csv {' '.join(PUBLISHED[folder])} --out docs/study/{folder}")


def test_the_study_has_nine_settings_of_three_seeds_or_more():
    with open(STUDY / "comparison.csv") as stream:
        rows = [row for row in csv.DictReader(stream) if row["metric"] == "fid"]
    last = max(int(row["epoch"]) for row in rows)
    final = {row["group"]: int(row["n"]) for row in rows if int(row["epoch"]) == last}
    assert last >= 10 and len(final) == 9 and min(final.values()) >= 3, final


def test_every_difference_the_docs_quote_is_in_a_published_comparison():
    published = "\n".join((STUDY / folder / "comparison.md").read_text() for folder in PUBLISHED)
    quoted = [(page.name, quote) for page in PAGES for quote in DIFFERENCE.findall(study_section(page))]
    assert len(quoted) >= 3
    assert [(page, quote) for page, quote in quoted if quote not in published] == []


def study_section(page) -> str:
    """The part of a page about the study: all of docs/study/README.md, elsewhere from the
    heading that names the study to the next heading of the same level."""
    text = page.read_text()
    if page.parent == STUDY:
        return text
    match = re.search(r"^(#+) .*study.*$", text, flags=re.MULTILINE | re.IGNORECASE)
    assert match, f"{page.name} has no section about the study"
    level = match.group(1)
    rest = text[match.end():]
    end = re.search(rf"^{level} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


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

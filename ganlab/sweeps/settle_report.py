"""A settle sweep's verdict table: Markdown for the parent run's description and the console, CSV beside it.

The sweeper (`hydra_plugins/ganlab_sweepers/settle.py`) writes `settle.md` and `settle.csv` into
the sweep folder's summary/ and sets a `settle.verdict.<setting>` tag per comparison on the
parent; the sweep callback (`ganlab.sweeps.sweep`) puts `settle.md` first in the parent's
description and logs both files under summary/.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ganlab.core.markdown import cut, table
from ganlab.sweeps.ranking import SUMMARY_TABLE

MARKDOWN, CSV = "settle.md", "settle.csv"
VERDICT_TAG = "settle.verdict."  # + a setting's label: its verdict against the reference
COLUMNS = ("setting", "verdict", "diff", "low", "high", "half_width", "seeds", "reference_seeds", "seeds_needed",
           "reference_seeds_needed", "fixed_seeds", "why")
HEADER = ["setting", "verdict", "difference [interval]", "seeds (setting, reference)", "design asked", "fixed design"]


def markdown(question, rows: list[dict], reused: dict[str, list[int]]) -> str:
    """The verdict table with what it answers, the guarantee and which seeds were reused."""
    ref = question.label(question.reference)
    lines = [f"**Settled**: {question.metric} at epoch {question.epoch} against `{ref}`, margin {question.margin:g}, "
             f"all verdicts right together with probability >= {1 - question.alpha:g} (Chapman 1950 two-stage design, "
             f"Bonferroni over {max(1, len(rows))} comparison(s)).", ""]
    cells = []
    for row in rows:
        interval = ("-" if row["diff"] != row["diff"] else
                    f"{row['diff']:+.4g} (no interval)" if row["low"] != row["low"] else  # a seed scored inf
                    f"{row['diff']:+.4g} [{row['low']:+.4g}, {row['high']:+.4g}]")
        asked = f"{row['seeds_needed']}, {row['reference_seeds_needed']}" if row["seeds_needed"] else "-"
        verdict = f"**{row['verdict']}**" + (f" ({row['why']})" if row["why"] else "")
        cells.append([question.label(row["setting"]), verdict, interval, f"{row['seeds']}, {row['reference_seeds']}",
                      asked, row["fixed_seeds"] or "-"])
    lines += [table(HEADER, cells, padded=False), "",
              "difference: setting - reference (mean over its seeds); **better**/**worse**: the interval excludes 0; "
              f"**equivalent**: it lies inside +-{question.margin:g}; **undecided**: max_seeds ({question.max_seeds}) "
              "ran out, a pilot job failed, or a seed scored inf (no interval exists). design asked: seeds the pilot "
              "says each needs; fixed design: seeds per setting a one-stage design would have needed with the "
              "variances known in advance."]
    if any(reused.values()):
        shown = "; ".join(f"{label}: seeds {', '.join(map(str, seeds))}" for label, seeds in reused.items() if seeds)
        lines.append(f"Reused (already in the store, not rerun): {shown}.")
    return "\n".join(lines) + "\n"


def write(folder: Path, question, rows: list[dict], reused: dict[str, list[int]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    text = markdown(question, rows, reused)
    (folder / MARKDOWN).write_text(text)
    with open(folder / CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "setting": question.label(row["setting"])})
    return text


def tags(question, rows: list[dict]) -> dict[str, str]:
    """`settle.verdict.<setting>` and the question's terms as parent tags (the runs table can show them)."""
    found = {VERDICT_TAG + re.sub(r"[^\w.\- /]", "_", question.label(row["setting"])): row["verdict"] for row in rows}
    found.update({"settle.reference": question.label(question.reference), "settle.metric": question.metric,
                  "settle.epoch": str(question.epoch), "settle.margin": f"{question.margin:g}"})
    return found


def put_first(client, run_id: str, folder: Path) -> None:
    """The verdict table above the parent's description, and its files under the parent's summary/."""
    from ganlab.tracking import store as tracking

    described = client.get_run(run_id).data.tags.get(tracking.NOTE_TAG, "")
    verdicts_first = (folder / MARKDOWN).read_text() + ("\n" + described if described else "")
    client.set_tag(run_id, tracking.NOTE_TAG, cut(verdicts_first, tracking.NOTE_LIMIT, f"{folder.name}/{MARKDOWN} and "
                                                  f"{folder.name}/{SUMMARY_TABLE}"))
    for name in (MARKDOWN, CSV):
        client.log_artifact(run_id, str(folder / name), folder.name)

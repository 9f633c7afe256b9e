"""The one writer of Markdown tables: every table ganlab writes (sweep summaries, comparisons,
the report, the baseline record and check, the score registry's table) goes through `table`."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]], right: set[int] = frozenset(), gap: str = "",
          padded: bool = True) -> str:
    """A Markdown table. `padded`: the columns padded so that the source reads as a table too, those in
    `right` (numbers) right-aligned; else one space around each cell (`| a | b |`, `|---|---|`).
    `gap` goes between columns inside the cells (MLflow's UI draws its tables without cell padding)."""
    if not padded:
        return "\n".join(["| " + " | ".join(map(str, header)) + " |", "|---" * len(header) + "|",
                          *("| " + " | ".join(map(str, row)) + " |" for row in rows)])
    if gap:
        def spaced(cells):
            return [f"{gap}{cell}" if index in right else f"{cell}{gap}" for index, cell in enumerate(cells)]

        header, rows = spaced(header), [spaced(row) for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells) -> str:
        return "| " + " | ".join(str(cell).rjust(width) if index in right else str(cell).ljust(width)
                                 for index, (cell, width) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (width + 1) + ":" if index in right else "-" * (width + 2)
                          for index, width in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def cut(text: str, limit: int, whole_at: str) -> str:
    """`text` whole when it has at most `limit` characters, else its first lines that fit and a last line
    saying where all of it is (`whole_at`, e.g. "summary/sweep_summary.md")."""
    if len(text) <= limit:
        return text
    tail = f"\n\n*(cut to {limit:,} characters: all of it is in {whole_at})*"
    kept = text[: limit - len(tail)]
    return (kept[: kept.rfind("\n")] if "\n" in kept else kept) + tail

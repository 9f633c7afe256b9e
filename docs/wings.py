"""Draw ganlab's wings and the imports between them: docs/images/wings.png.

    .venv/bin/python docs/wings.py            # writes docs/images/wings.png

Reads every module's imports with `ast` (nothing is imported or run), groups the modules by
wing (`ganlab/<wing>/`; the command-line entry points directly in `ganlab/` are one group at
the top) and draws the wings bottom to top in the order `ganlab/__init__.py` states, each
with its modules and their lines, and one arrow per pair of wings that import each other,
labelled with the number of imports. An arrow that runs up the picture (a wing importing one
above it) is drawn red; the script exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ganlab"
WINGS = ["core", "gan", "evaluation", "tracking", "training", "sweeps", "baseline"]  # bottom to top
ENTRY = "entry points"  # the CLIs directly in ganlab/
OUT = REPO / "docs" / "images" / "wings.png"


def wing_of(module: str) -> str | None:
    """`ganlab.sweeps.summary` -> `sweeps`; a module directly in ganlab -> the entry points."""
    parts = module.split(".")
    if parts[0] != "ganlab":
        return None
    return parts[1] if len(parts) > 2 and parts[1] in WINGS else ENTRY


def imported(path: Path) -> set[str]:
    """The ganlab modules `path` imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name.startswith("ganlab.")}


def survey() -> tuple[dict[str, list[tuple[str, int]]], Counter]:
    """{wing: [(module file, lines)]} and {(importing wing, imported wing): imports}."""
    modules: dict[str, list[tuple[str, int]]] = {wing: [] for wing in [*WINGS, ENTRY]}
    arrows: Counter = Counter()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py" and len(relative.parts) == 1:
            continue
        name = "ganlab." + ".".join(relative.with_suffix("").parts)
        here = wing_of(name)
        if here is None or (len(relative.parts) > 1 and relative.parts[0] not in WINGS):
            continue
        if path.name != "__init__.py":
            modules[here].append((path.stem, len(path.read_text().splitlines())))
        for target in {wing_of(module) for module in imported(path)} - {here, None, ENTRY}:
            arrows[(here, target)] += 1
    return modules, arrows


def draw(modules, arrows, out: Path) -> list[tuple[str, str]]:
    """The picture; returns the arrows that run up (there should be none)."""
    levels = [*WINGS, ENTRY]
    height = {wing: index for index, wing in enumerate(levels)}
    fig, ax = plt.subplots(figsize=(12, 10))
    boxes = {}
    for wing in levels:
        y = height[wing] * 1.4
        names = sorted(modules[wing], key=lambda item: -item[1])
        label = ", ".join(f"{stem} {lines}" for stem, lines in names)
        width = 8.2
        ax.add_patch(FancyBboxPatch((0, y), width, 0.9, boxstyle="round,pad=0.05", facecolor="#eef3fb",
                                    edgecolor="#3a6ea5"))
        title = "ganlab/*.py (the CLIs)" if wing == ENTRY else f"ganlab/{wing}/"
        ax.text(0.15, y + 0.68, title, fontsize=12, weight="bold", va="center")
        ax.text(0.15, y + 0.28, _wrapped(label, 108), fontsize=7, va="center", color="#333")
        boxes[wing] = (width, y)
    upward = []
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#17becf", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]  # no red
    for (source, target), count in sorted(arrows.items(), key=lambda item: (height[item[0][0]], height[item[0][1]])):
        up = height[target] > height[source]
        if up:
            upward.append((source, target))
        column = height[source]  # one column of arrows per importing wing, coloured as it
        x = 8.5 + 0.6 * column + 0.08 * height[target]
        colour = "#c0392b" if up else colours[column % len(colours)]
        start = boxes[source][1] + (0.9 if up else 0.0)
        end = boxes[target][1] + (0.0 if up else 0.9)
        ax.plot([boxes[source][0], x], [boxes[source][1] + 0.45] * 2, color=colour, linewidth=0.6, alpha=0.5)
        ax.add_patch(FancyArrowPatch((x, boxes[source][1] + 0.45), (x, end), arrowstyle="-|>", mutation_scale=9,
                                     color=colour, linewidth=1.0))
        ax.plot([boxes[target][0], x], [end] * 2, color=colour, linewidth=0.6, alpha=0.5, linestyle=":")
        ax.text(x + 0.03, end + 0.08, str(count), fontsize=7, color=colour)
    ax.set_xlim(-0.2, 13.6)
    ax.set_ylim(-0.3, len(levels) * 1.4)
    ax.axis("off")
    ax.set_title("ganlab's wings, bottom to top: each imports only wings below it\n(an arrow per pair; its number: how many modules of the upper wing import the lower one)",
                 fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return upward


def _wrapped(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split(", "):
        if line and len(line) + len(word) + 2 > width:
            lines.append(line + ",")
            line = word
        else:
            line = f"{line}, {word}" if line else word
    return "\n".join([*lines, line])


def main() -> int:
    modules, arrows = survey()
    upward = draw(modules, arrows, OUT)
    print(f"wrote {OUT.relative_to(REPO)}: {sum(map(len, modules.values()))} modules, {len(arrows)} arrows between wings")
    for source, target in upward:
        print(f"an import runs up: {source} imports {target}", file=sys.stderr)
    return 1 if upward else 0


if __name__ == "__main__":
    sys.exit(main())

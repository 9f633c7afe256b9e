"""The package's wings: imports run one way, down the order ganlab/__init__.py states; modules stay small."""

from __future__ import annotations

import importlib.util

from conftest import REPO

MAX_LINES = 450
CLIS = {"__init__.py", "train.py", "evaluate.py", "report.py", "reproduce.py", "classifier.py"}


def wings_script():
    spec = importlib.util.spec_from_file_location("wings", REPO / "docs" / "wings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_wing_imports_one_above_it():
    wings = wings_script()
    modules, arrows = wings.survey()
    order = {wing: index for index, wing in enumerate(wings.WINGS)}
    upward = [(source, target) for source, target in arrows if order.get(source, len(order)) < order[target]]
    assert upward == []
    assert ("core", "gan") not in arrows and ("core", "training") not in arrows
    assert {stem for stem, _ in modules["sweeps"]} >= {"summary", "ranking", "pictures", "parent"}


def test_no_module_is_over_450_lines_and_only_the_clis_sit_at_the_top():
    sizes = {path.relative_to(REPO): len(path.read_text().splitlines()) for path in (REPO / "ganlab").rglob("*.py")}
    assert {str(path): lines for path, lines in sizes.items() if lines > MAX_LINES} == {}
    assert {path.name for path in (REPO / "ganlab").glob("*.py")} <= CLIS


def test_every_name_a_benchmark_or_script_imports_from_ganlab_is_there():
    """Benchmarks run outside the suite: a module moved to another wing must not leave one importing its old place."""
    import ast
    import importlib

    missing = []
    for script in sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "docs").glob("*.py")]):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ganlab":
                module = importlib.import_module(node.module)
                missing += [f"{script.name}: {node.module}.{alias.name}" for alias in node.names
                            if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
    assert missing == []

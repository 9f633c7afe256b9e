"""What each test of the suite costs in CPU: a pytest plugin, then a table of the costliest.

    rm -rf /tmp/pytest_cpu                                               # a run adds to what is there
    PYTHONPATH=benchmarks .venv/bin/python -m pytest -p pytest_cpu      # the suite as CI runs it
    .venv/bin/python benchmarks/pytest_cpu.py [--top 40]                 # the table of that run

For each test, on whichever worker runs it, the plugin adds up the user and system CPU seconds
of the worker itself and of every child process it waited for (a CLI run through
`conftest.run_cli`, a server it stopped) over the test's set-up, call and tear-down, and its
wall seconds; a session fixture's cost goes to the first test that uses it. One line per test
goes to `$PYTEST_CPU_DIR/<worker pid>.tsv` (default /tmp/pytest_cpu). Not counted: processes
nobody waits for, such as the SLURM array tasks that slurmd starts, and the parallel
launcher's workers whose parent was killed. The measurement is the same on a loaded machine;
the wall seconds are not.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pytest

FOLDER = Path(os.environ.get("PYTEST_CPU_DIR", "/tmp/pytest_cpu"))


def cpu_seconds() -> tuple[float, float]:
    """(this process's CPU seconds, its waited-for children's), user and system together."""
    times = os.times()
    return times.user + times.system, times.children_user + times.children_system


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own, children = cpu_seconds()
    started = time.monotonic()
    yield
    own_after, children_after = cpu_seconds()
    FOLDER.mkdir(parents=True, exist_ok=True)
    with open(FOLDER / f"{os.getpid()}.tsv", "a") as stream:
        stream.write(f"{item.nodeid}\t{own_after - own:.2f}\t{children_after - children:.2f}\t"
                     f"{time.monotonic() - started:.2f}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=40, help="how many of the costliest tests to list")
    args = parser.parse_args()
    rows = []
    for file in sorted(FOLDER.glob("*.tsv")):
        for line in file.read_text().splitlines():
            test, own, children, wall = line.split("\t")
            rows.append((float(own) + float(children), float(own), float(children), float(wall), test))
    if not rows:
        raise SystemExit(f"no measurements in {FOLDER}: run the suite with -p pytest_cpu first")
    rows.sort(reverse=True)
    print(f"{len(rows)} tests, {sum(row[0] for row in rows):,.0f} CPU-s in all ({FOLDER})")
    print(f"{'CPU-s':>8} {'worker':>7} {'children':>8} {'wall s':>7}  test")
    for total, own, children, wall, test in rows[:args.top]:
        print(f"{total:8.1f} {own:7.1f} {children:8.1f} {wall:7.1f}  {test}")


if __name__ == "__main__":
    main()

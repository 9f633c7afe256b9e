"""The baseline record (docs/baseline/): what it holds, reading and writing it, and the README's table made from it.

The record is a folder:
- runs.csv, a record (`ganlab.core.record`) grouped by `dtype` (fp32|bf16): one row per value
  of every score and training metric (EPOCH_METRICS) of every seed at every evaluated
  epoch, and the first RECORDED_STEPS per-step losses of every seed as the metrics
  `step_d_loss` / `step_g_loss`, whose `epoch` column holds the global step (1-based).
  Records written before the dtype knob's rename call the column `precision`; they are
  read the same.
- machine.json: the CPU model, its ISA flags, cores, threads per job, accelerator, the git
  commit, python and package versions (read from the runs' own tags), data sha256, the
  date, the seeds, epochs and steps per epoch, and `overrides`: the record's command-line
  overrides besides those a reproduction sets itself (e.g. `experiment=baseline`), which
  a reproduction applies again.
- table.md: the README's baseline table and bf16 verdict, rendered from runs.csv and
  machine.json by `baseline_table` (never typed by hand).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ganlab.core import scores
from ganlab.core.config import DTYPES
from ganlab.core.errors import InputError
from ganlab.core.markdown import table as markdown_table
from ganlab.core.record import DTYPE, RECORD_COLUMNS, Observation, read_observations, write_observations
from ganlab.sweeps.seed_stats import welch

RECORD_DIR = Path(__file__).resolve().parents[2] / "docs" / "baseline"
RUNS_CSV, MACHINE_JSON, TABLE_MD = "runs.csv", "machine.json", "table.md"
EPOCH_METRICS = (*scores.SCORE_NAMES, *scores.TRAINING_NAMES)
STEP_PREFIX = "step_"
RECORDED_STEPS = 20
TABLE_EPOCHS = (1, 5, 10, 15, 20, 25)


def step_metric(name: str) -> str:
    return STEP_PREFIX + name


STEP_METRICS = (step_metric(scores.D_LOSS), step_metric(scores.G_LOSS))


def is_step(metric: str) -> bool:
    return metric.startswith(STEP_PREFIX)


@dataclass
class Record:
    """runs.csv and machine.json of one record: values[(dtype, seed, metric, epoch)] = value."""

    machine: dict
    values: dict[tuple[str, int, str, int], float]
    folder: Path | None = None

    def dtypes(self) -> list[str]:
        found = {key[0] for key in self.values}
        return [dtype for dtype in DTYPES if dtype in found] + sorted(found - set(DTYPES))

    def seeds(self, dtype: str) -> list[int]:
        return sorted({seed for found, seed, _, _ in self.values if found == dtype})

    def epochs(self, dtype: str) -> list[int]:
        return sorted({epoch for found, _, metric, epoch in self.values if found == dtype and not is_step(metric)})

    def across_seeds(self, dtype: str, metric: str, epoch: int) -> list[float]:
        return [self.values[key] for seed in self.seeds(dtype) if (key := (dtype, seed, metric, epoch)) in self.values]


def read_baseline(folder: Path) -> Record:
    """The record in `folder`; InputError (for `--record`) if a file is missing or malformed."""
    folder = Path(folder)
    runs, machine = folder / RUNS_CSV, folder / MACHINE_JSON
    for path in (runs, machine):
        if not path.is_file():
            raise InputError(f"--record: {str(path)!r} does not exist. Name a record folder holding {RUNS_CSV} and "
                             f"{MACHINE_JSON} (the repo's is docs/baseline), or make one with --write-record.")
    try:
        info = json.loads(machine.read_text())
        observations, keys = read_observations(runs)
        if keys != [DTYPE]:
            raise ValueError(f"grouping columns {','.join(keys) or 'none'}, expected {','.join((DTYPE, *RECORD_COLUMNS))}")
        values = {(found.group[DTYPE], int(found.seed), found.metric, found.epoch): found.value for found in observations}
    except ValueError as error:  # json's JSONDecodeError is one too
        raise InputError(f"--record: {folder} is not a readable record ({type(error).__name__}: {error}).") from None
    if not values:
        raise InputError(f"--record: {runs} holds no values.")
    return Record(info, values, folder.resolve())


def write_runs_csv(values: dict, path: Path) -> Path:
    """runs.csv: one row per value, sorted by dtype, seed, then the epoch rows before the step rows."""
    metric_order = {name: index for index, name in enumerate((*EPOCH_METRICS, *STEP_METRICS))}

    def order(key):
        dtype, seed, metric, epoch = key
        dtype_order = DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES)
        return dtype_order, dtype, seed, is_step(metric), epoch, metric_order.get(metric, len(metric_order)), metric

    rows = [Observation({DTYPE: key[0]}, str(key[1]), key[2], key[3], values[key]) for key in sorted(values, key=order)]
    return write_observations(rows, [DTYPE], path)


def write_baseline(folder: Path, values: dict, machine: dict) -> str:
    """runs.csv, machine.json and table.md into `folder`; returns the table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_runs_csv(values, folder / RUNS_CSV)
    (folder / MACHINE_JSON).write_text(json.dumps(machine, indent=2) + "\n")
    return write_table(folder)


def write_table(folder: Path) -> str:
    table = baseline_table(read_baseline(folder))
    (Path(folder) / TABLE_MD).write_text(table)
    return table


def baseline_table(record: Record) -> str:
    """Markdown: fp32's headline scores (mean ± std over seeds) at TABLE_EPOCHS, and the bf16 verdict."""
    machine = record.machine
    reference = DTYPES[0] if DTYPES[0] in record.dtypes() else record.dtypes()[0]
    seeds = record.seeds(reference)
    recorded = record.epochs(reference)
    epochs = sorted({epoch for epoch in TABLE_EPOCHS if epoch in recorded} | {recorded[-1]})
    lines = [f"Baseline, {reference}: mean ± std over seeds {', '.join(map(str, seeds))} "
             f"(generated from docs/baseline/{RUNS_CSV} by `python -m ganlab.reproduce --write-table docs/baseline`).", "",
             markdown_table(["epoch", *scores.HEADLINE], [[str(epoch), *_cells(record, reference, epoch)] for epoch in epochs],
                            padded=False)]
    lines += ["", _bf16_verdict(record, reference), "",
              f"Made on {machine.get('cpu_model', 'an unknown CPU')} (ISA: {' '.join(machine.get('isa', [])) or 'none'}), "
              f"{machine.get('threads')} thread per job, TensorFlow {machine.get('versions', {}).get('tensorflow')}, "
              f"commit {str(machine.get('git_commit'))[:7]}. Exact numbers, speeds and so the bf16 verdict depend on the "
              "CPU; check yours with `python -m ganlab.reproduce --seeds 0 --epochs 1`."]
    return "\n".join(lines) + "\n"


def _bf16_verdict(record: Record, reference: str) -> str:
    other = next((dtype for dtype in record.dtypes() if dtype != reference), None)
    if other is None:
        return f"**bf16 verdict**: the record has no {DTYPES[1]} runs."
    epoch = max(set(record.epochs(reference)) & set(record.epochs(other)))
    ours, theirs = record.across_seeds(other, scores.FID, epoch), record.across_seeds(reference, scores.FID, epoch)
    difference = welch(ours, theirs)
    if math.isnan(difference.ci_low):
        quality = f"{scores.FID} cannot be told apart from seed noise with so few seeds"
    elif difference.ci_low > 0 or difference.ci_high < 0:
        better = (difference.diff < 0) == (scores.direction(scores.FID) == scores.LOWER)
        quality = f"{other} is clearly {'better' if better else 'worse'} in {scores.FID}"
    else:
        quality = f"no clear difference in {scores.FID} (within seed noise)"
    interval = "" if math.isnan(difference.ci_low) else (
        f", 95% CI {difference.ci_low:+.3g} to {difference.ci_high:+.3g}, Welch p={difference.p_value:.2g}")
    speed_ours, speed_theirs = _mean_speed(record, other), _mean_speed(record, reference)
    ratio = speed_ours / speed_theirs
    return (f"**bf16 verdict** (computed from the record): at epoch {epoch}, {other} reaches {scores.FID} "
            f"{statistics.fmean(ours):.3g} ± {_std(ours):.2g} against {reference}'s {statistics.fmean(theirs):.3g} ± "
            f"{_std(theirs):.2g} (difference {difference.diff:+.3g}{interval}): {quality}. On this CPU {other} trains "
            f"{'slower' if ratio < 1 else 'faster'} than {reference}: {speed_ours:.3g} against {speed_theirs:.3g} "
            f"steps/s ({ratio:.2f}x; mean over seeds and epochs{', the first left out' if len(record.epochs(other)) > 1 else ''}).")


def _cells(record, reference: str, epoch: int) -> list[str]:
    """The table's row of `epoch`: each headline score's mean ± std over the record's seeds."""
    cells = []
    for metric in scores.HEADLINE:
        found = record.across_seeds(reference, metric, epoch)
        cells.append(f"{statistics.fmean(found):.3g} ± {_std(found):.2g}" if found else "-")
    return cells


def _std(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_speed(record: Record, dtype: str) -> float:
    """Mean steps/s over seeds and epochs, the first epoch (which traces the step) left out when there are more."""
    epochs = record.epochs(dtype)
    epochs = epochs[1:] if len(epochs) > 1 else epochs
    return statistics.fmean(value for epoch in epochs for value in record.across_seeds(dtype, scores.STEPS_PER_SEC, epoch))

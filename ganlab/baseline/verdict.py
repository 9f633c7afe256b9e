"""The verdict: does a rerun of the baseline reproduce its record? exact, consistent or differs, per seed.

- **exact**: same ISA flags, same accelerator (machine.json's `accelerator`: "none" for a
  CPU, else the GPUs nvidia-smi lists), same versions of NUMERIC_PACKAGES, same threads and
  data as the record, and the first RECORDED_STEPS per-step losses equal the record's while every
  recorded value at every compared epoch is within EXACT_RTOL (relative). On that machine
  any other difference is a real change: **differs**.
- **consistent**: something of ISA / accelerator / versions / threads / data differs (a GPU
  rerun of a CPU record, for one: other kernels, other rounding), and every score
  (scores.SCORE_NAMES) at every compared epoch lies within the record's seed spread:
  z = (value - mean of the record's seeds) / spread, |z| <= Z_LIMIT, where spread is the
  seeds' standard deviation (ddof 1) at that epoch, but never below the score's pooled
  seed spread over all the record's epochs (so a score every seed put at exactly 0 at
  epoch 1, such as recall, does not make any non-zero value "differ"). This is a z-score,
  not a t-test: the rerun seeds are the record's own, so their values sit among the
  record's rather than being fresh draws.
- **differs** otherwise, naming which of ISA / accelerator / versions / threads / data differ.

Every compared value is a `Check`; `write_checks` writes them all as checks.csv (full
precision) and checks.md. A job comes in as a `JobResult`, independent of MLflow, so the
rules are testable alone.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ganlab.core import scores
from ganlab.core.markdown import table as markdown_table
from ganlab.baseline.record import EPOCH_METRICS, Record, is_step

NUMERIC_PACKAGES = ("tensorflow", "keras", "numpy", "scipy")  # their versions change the numbers
NO_ACCELERATOR = "none"  # machine.json's accelerator for a CPU-only machine (ganlab.core.machine.accelerator)
NOT_EXACT = (scores.STEPS_PER_SEC,)  # a timing: never the same twice
EXACT_RTOL = 1e-6
Z_LIMIT = 3.0
EXACT, CONSISTENT, DIFFERS = "exact", "consistent", "differs"
CHECKS_CSV, CHECKS_MD = "checks.csv", "checks.md"


@dataclass
class JobResult:
    """One job's numbers and where it ran.

    values[(metric, epoch)] at evaluated epochs; steps[(step metric, step)] for the first
    RECORDED_STEPS steps; environment as in machine.json (isa, threads, versions, ...)."""

    seed: int
    dtype: str
    values: dict[tuple[str, int], float]
    steps: dict[tuple[str, int], float]
    environment: dict
    status: str = "FINISHED"
    failure: str = ""
    run_id: str = ""


@dataclass
class Check:
    """One compared value of one seed. `epoch` is the step for step metrics (as in runs.csv)."""

    seed: int
    epoch: int
    metric: str
    value: float | None
    record: float | None  # the same seed's value in the record
    rel_diff: float | None
    exact: bool
    mean: float | None = None  # of the record's seeds (scores only)
    spread: float | None = None
    z: float | None = None
    within: bool | None = None  # |z| <= Z_LIMIT (scores only)


@dataclass
class SeedVerdict:
    seed: int
    verdict: str
    reason: str
    differences: list[str] = field(default_factory=list)  # of ISA / accelerator / versions / threads / data
    checks: list[Check] = field(default_factory=list)

    def line(self) -> str:
        return f"seed {self.seed}: {self.verdict} - {self.reason}"


def environment_differences(record_env: dict, env: dict) -> dict[str, str]:
    """{"ISA" | "accelerator" | "versions" | "threads" | "data": what differs} between the record's machine and a job's."""
    found = {}
    if set(record_env.get("isa", [])) != set(env.get("isa", [])):
        found["ISA"] = f"{' '.join(env.get('isa', [])) or 'none'} here, {' '.join(record_env.get('isa', [])) or 'none'} in the record"
    if str(env.get("accelerator", NO_ACCELERATOR)) != str(record_env.get("accelerator", NO_ACCELERATOR)):
        found["accelerator"] = (f"{env.get('accelerator', NO_ACCELERATOR)} here, "
                                f"{record_env.get('accelerator', NO_ACCELERATOR)} in the record")
    versions = [f"{package} {env['versions'].get(package)} here, {record_env['versions'].get(package)} in the record"
                for package in NUMERIC_PACKAGES
                if env.get("versions", {}).get(package) != record_env.get("versions", {}).get(package)]
    if versions:
        found["versions"] = "; ".join(versions)
    if str(env.get("threads")) != str(record_env.get("threads")):
        found["threads"] = f"{env.get('threads')} here, {record_env.get('threads')} in the record"
    if env.get("data_sha256") != record_env.get("data_sha256"):
        found["data"] = f"sha256 {str(env.get('data_sha256'))[:12]} here, {str(record_env.get('data_sha256'))[:12]} in the record"
    return found


def relative_difference(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def seed_spread(record: Record, dtype: str, metric: str, epoch: int) -> tuple[float, float]:
    """(mean, spread) of the record's seeds at `epoch`: the std (ddof 1), at least the pooled
    std of `metric` over all the record's epochs. NaN spread with fewer than 2 seeds or an infinite
    value (`fid_class_worst` of a class never drawn), whose epochs the pooled std leaves out."""
    found = record.across_seeds(dtype, metric, epoch)
    mean = statistics.fmean(found) if found else math.nan
    if len(found) < 2 or not all(map(math.isfinite, found)):
        return mean, math.nan
    variances = [statistics.variance(values) for other in record.epochs(dtype)
                 if len(values := record.across_seeds(dtype, metric, other)) > 1 and all(map(math.isfinite, values))]
    pooled = math.sqrt(statistics.fmean(variances))
    return mean, max(statistics.stdev(found), pooled)


def z_score(value: float, mean: float, spread: float) -> float:
    if math.isnan(spread) or math.isnan(mean):
        return math.nan
    if spread == 0:
        return 0.0 if relative_difference(value, mean) <= EXACT_RTOL else math.inf
    return (value - mean) / spread


def check_values(job: JobResult, record: Record, epochs: int) -> list[Check]:
    """Every recorded value of the job's seed up to `epochs`: per-step losses, then epoch values."""
    checks = []
    dtype, seed = job.dtype, job.seed
    per_epoch = record.machine.get("steps_per_epoch")
    last_step = epochs * per_epoch if isinstance(per_epoch, int) else math.inf
    for (recorded_dtype, recorded_seed, metric, epoch), expected in record.values.items():
        if recorded_dtype != dtype or recorded_seed != seed or not is_step(metric) or epoch > last_step:
            continue
        value = job.steps.get((metric, epoch))
        checks.append(Check(seed, epoch, metric, value, expected, _rel(value, expected), value == expected))
    for epoch in range(1, epochs + 1):
        for metric in EPOCH_METRICS:
            expected = record.values.get((dtype, seed, metric, epoch))
            if expected is None or metric in NOT_EXACT:
                continue
            value = job.values.get((metric, epoch))
            rel = _rel(value, expected)
            check = Check(seed, epoch, metric, value, expected, rel, rel is not None and rel <= EXACT_RTOL)
            if metric in scores.SCORE_NAMES:
                check.mean, check.spread = seed_spread(record, dtype, metric, epoch)
                check.z = math.nan if value is None else z_score(value, check.mean, check.spread)
                check.within = not math.isnan(check.z) and abs(check.z) <= Z_LIMIT
            checks.append(check)
    return sorted(checks, key=lambda check: (not is_step(check.metric), check.epoch))


def _rel(value: float | None, expected: float) -> float | None:
    return None if value is None else relative_difference(value, expected)


def judge(job: JobResult, record: Record, epochs: int) -> SeedVerdict:
    """exact, consistent or differs for one seed (the rules are the module's docstring)."""
    differences = environment_differences(record.machine, job.environment)
    named = list(differences)
    if job.status != "FINISHED":
        return SeedVerdict(job.seed, DIFFERS, f"its job ended {job.status}: {job.failure or 'see its run'}", named)
    checks = check_values(job, record, epochs)
    unequal = [check for check in checks if not check.exact]
    span = "epoch 1" if epochs == 1 else f"epochs 1-{epochs}"
    steps = len({check.epoch for check in checks if is_step(check.metric)})
    values = sum(not is_step(check.metric) for check in checks)
    if not differences:
        same = "same ISA, accelerator, versions, threads and data as the record"
        if not unequal:
            return SeedVerdict(job.seed, EXACT, f"{same}; the losses of its first {steps} steps and all {values} "
                                                f"recorded values of {span} equal the record's", named, checks)
        first = unequal[0]
        code = ""
        if job.environment.get("git_commit") != record.machine.get("git_commit"):
            code = (f"; the code differs (commit {str(job.environment.get('git_commit'))[:7]} here, "
                    f"{str(record.machine.get('git_commit'))[:7]} in the record)")
        return SeedVerdict(job.seed, DIFFERS, f"{same}, yet {_describe_unequal(first)}; {len(unequal)} of {len(checks)} "
                                              f"values differ{code}: a real change", named, checks)
    judged = [check for check in checks if check.within is not None]
    outside = [check for check in judged if not check.within]
    other = f"{', '.join(named)} differ{'s' if len(named) == 1 else ''} from the record ({'; '.join(differences.values())})"
    if not judged:
        return SeedVerdict(job.seed, DIFFERS, f"{other}, and the record has no scores to judge by", named, checks)
    if outside:
        worst = max(outside, key=lambda check: abs(check.z) if not math.isnan(check.z) else math.inf)
        return SeedVerdict(job.seed, DIFFERS, f"{other}; {_describe_outside(worst)}; {len(outside)} of {len(judged)} scores "
                                              f"outside the record's seed spread (|z| <= {Z_LIMIT:g})", named, checks)
    largest = max(judged, key=lambda check: abs(check.z))
    identical = " (its numbers even equal the record's exactly)" if not unequal else ""
    return SeedVerdict(job.seed, CONSISTENT, f"{other}; every score of {span} lies within the record's seed spread "
                                             f"(z-score against {len(record.seeds(job.dtype))} seeds, |z| <= "
                                             f"{Z_LIMIT:g}; largest |z| {abs(largest.z):.2f}, {largest.metric} at epoch "
                                             f"{largest.epoch}){identical}", named, checks)


def _describe_unequal(check: Check) -> str:
    where = f"step {check.epoch}" if is_step(check.metric) else f"epoch {check.epoch}"
    if check.value is None:
        return f"{check.metric} at {where} is missing (the record has {check.record!r})"
    return (f"{check.metric} at {where} is {check.value!r} against the record's {check.record!r} "
            f"(relative difference {check.rel_diff:.2g}; exact needs <= {EXACT_RTOL:g})")


def _describe_outside(check: Check) -> str:
    if check.value is None:
        return f"{check.metric} at epoch {check.epoch} is missing"
    if math.isnan(check.z):
        return f"{check.metric} at epoch {check.epoch} cannot be judged: the record has fewer than 2 seeds"
    return (f"{check.metric} at epoch {check.epoch} is {scores.format_value(check.metric, check.value)} against the "
            f"record's seeds {check.mean:.4g} ± {check.spread:.2g} (z = {check.z:.2f})")


def overall(verdicts: list[SeedVerdict]) -> str:
    found = {verdict.verdict for verdict in verdicts}
    return DIFFERS if DIFFERS in found or not verdicts else CONSISTENT if CONSISTENT in found else EXACT


CHECK_COLUMNS = ("seed", "epoch", "metric", "value", "record", "rel_diff", "exact", "record_mean", "record_spread", "z", "within")


def write_checks(verdicts: list[SeedVerdict], folder: Path) -> list[Path]:
    """checks.csv (every check, full precision) and checks.md (the verdicts, then the checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [[check.seed, check.epoch, check.metric, check.value, check.record, check.rel_diff, check.exact,
             check.mean, check.spread, check.z, check.within] for verdict in verdicts for check in verdict.checks]
    with open(folder / CHECKS_CSV, "w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CHECK_COLUMNS)
        writer.writerows([["" if cell is None else repr(cell) if isinstance(cell, float) else cell for cell in row]
                          for row in rows])
    lines = ["# Reproduction against the record", "", *[f"- {verdict.line()}" for verdict in verdicts], "",
             "`epoch` is the step for step_* rows. z = (value - record seeds' mean) / spread; "
             f"exact needs a relative difference <= {EXACT_RTOL:g}.", "",
             markdown_table(list(CHECK_COLUMNS), [[_cell(cell) for cell in row] for row in rows], padded=False)]
    (folder / CHECKS_MD).write_text("\n".join(lines) + "\n")
    return [folder / CHECKS_CSV, folder / CHECKS_MD]


def _cell(cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float):
        return f"{cell:.6g}" if math.isfinite(cell) else str(cell)
    return str(cell)

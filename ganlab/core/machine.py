"""The machine a run ran on: CPU model, the instruction-set flags that change numbers, cores, accelerator;
and what ran it there: the code's git commit, the packages' versions, the user (`environment_tags`).

Numbers of the same config and seed are identical only on the same kind of machine:
oneDNN picks other kernels with AVX-512 or native bf16, so the last bits of every sum
change. Every run records these facts as tags, and the baseline record keeps them in
`docs/baseline/machine.json`, so two runs' numbers can be compared knowingly.
"""

from __future__ import annotations

import getpass
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The /proc/cpuinfo flags that decide which kernels TensorFlow's oneDNN runs.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
PACKAGES = ("tensorflow", "keras", "mlflow", "hydra-core", "numpy", "scipy")  # their versions are tags of every run
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU has, in ISA_FLAGS order."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in ISA_FLAGS if flag in present]
    return []


def has_native_bf16() -> bool:
    return any(flag in isa_flags() for flag in ("avx512_bf16", "amx_bf16"))


def accelerator() -> str:
    """The NVIDIA GPUs nvidia-smi lists, or "none"."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "none"
    gpus = [line.split(" (UUID")[0] for line in listed.stdout.splitlines() if line.startswith("GPU")]
    return "; ".join(gpus) if listed.returncode == 0 and gpus else "none"


def describe(threads: int | None = None) -> dict[str, str]:
    """The facts as strings (for MLflow tags and machine.json)."""
    return {
        "cpu_model": cpu_model(),
        "isa": " ".join(isa_flags()) or "none",
        "cores": str(os.cpu_count() or 1),
        "threads": str(threads) if threads is not None else "all",
        "accelerator": accelerator(),
    }


def environment_tags() -> dict[str, str]:
    """Git commit and dirtiness of the code, versions of what ran it, and who and what started it."""
    tags = {"version.python": platform.python_version(), "version.ganlab": package_version("ganlab")}
    for package in PACKAGES:
        tags[f"version.{package}"] = package_version(package)
    commit, dirty = _git_state(PROJECT_ROOT)
    tags["git.commit"] = commit
    tags["git.dirty"] = dirty
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    tags["mlflow.user"] = _user()
    return tags


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _git_state(folder: Path) -> tuple[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"

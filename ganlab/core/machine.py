"""The machine a run ran on: CPU model, the instruction-set flags that change numbers, cores, accelerator.

Numbers of the same config and seed are identical only on the same kind of machine:
oneDNN picks other kernels with AVX-512 or native bf16, so the last bits of every sum
change. Every run records these facts as tags, and the baseline record keeps them in
`docs/baseline/machine.json`, so two runs' numbers can be compared knowingly.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# The /proc/cpuinfo flags that decide which kernels TensorFlow's oneDNN runs.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

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

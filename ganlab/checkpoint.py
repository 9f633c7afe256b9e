"""Checkpoints: everything a job needs to continue bit for bit from its last whole epoch.

A checkpoint is a folder `checkpoint/` in the job's output folder holding
- `state.npz`: every variable of G and D (weights and the dropout layers' seed states),
  both Adam optimizers' variables, the state of the trainer's random generator, and the
  per-epoch records so far (per-step losses and logged metrics);
- `config.yaml`: the job's resolved config;
- `meta.json`: the epoch it was taken after, the MLflow run id and store.

Each file is written to a temporary name and renamed into place, state last, so a kill
while writing leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ganlab.errors import InputError

FOLDER = "checkpoint"


@dataclass
class Checkpoint:
    folder: Path
    epoch: int
    run_id: str | None
    tracking_uri: str | None
    experiment: str | None
    config: DictConfig

    @property
    def state_file(self) -> Path:
        return self.folder / "state.npz"


def save(folder: Path, variables: list[np.ndarray], records: list[dict], config: dict, meta: dict) -> None:
    """Write one checkpoint into `folder` (atomic per file; state.npz is renamed last)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"v{index:04d}": value for index, value in enumerate(variables)}
    arrays["records"] = np.array(json.dumps(records))
    _atomic_write(folder / "config.yaml", lambda file: OmegaConf.save(OmegaConf.create(config), file))
    _atomic_write(folder / "meta.json", lambda file: Path(file).write_text(json.dumps(meta, indent=1)))
    _atomic_write(folder / "state.npz", lambda file: np.savez(file, **arrays))


def load_state(checkpoint: Checkpoint) -> tuple[list[np.ndarray], list[dict]]:
    """The saved variables (in save order) and the per-epoch records."""
    try:
        with np.load(checkpoint.state_file, allow_pickle=False) as archive:
            names = sorted(name for name in archive.files if name.startswith("v"))
            return [archive[name] for name in names], json.loads(str(archive["records"]))
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"resume: checkpoint {str(checkpoint.state_file)!r} cannot be read ({error}).") from error


def find(folder: Path) -> Checkpoint:
    """Read the checkpoint in `folder` (a checkpoint folder or the job folder holding one)."""
    folder = Path(folder)
    if (folder / FOLDER).is_dir():
        folder = folder / FOLDER
    meta_file, config_file = folder / "meta.json", folder / "config.yaml"
    if not (folder / "state.npz").is_file() or not meta_file.is_file() or not config_file.is_file():
        raise InputError(
            f"resume: no checkpoint in {str(folder)!r} (expected state.npz, meta.json and config.yaml, "
            "written after every epoch). Give a job's output folder, its checkpoint folder, or an MLflow run id."
        )
    meta = json.loads(meta_file.read_text())
    return Checkpoint(
        folder=folder,
        epoch=int(meta["epoch"]),
        run_id=meta.get("run_id"),
        tracking_uri=meta.get("tracking_uri"),
        experiment=meta.get("experiment"),
        config=OmegaConf.load(config_file),
    )


def _atomic_write(target: Path, write) -> None:
    partial = target.with_name(f".{target.name}.partial{target.suffix}")
    write(partial)
    os.replace(partial, target)

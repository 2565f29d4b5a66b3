"""Surviving a killed training run: atomic Lightning checkpoints, the RNG state saved in them,
and the checks that make `train --resume RUN` continue that run or fail loudly."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..core.config import TrainConfig, config_from_dict
from ..data import Record
from ..models.weights import CheckpointError

LAST = Path("lightning") / "last.ckpt"


class ResumeError(CheckpointError):
    """A run folder that cannot be resumed; never answered by a silent fresh start."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each Lightning checkpoint to a temporary file in the same folder, then rename it
    over the old one: a kill mid-write leaves the previous checkpoint whole."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain lists and tensors (weights-only loadable)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [name, keys.tolist(), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was started with (its config.yaml)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ResumeError(f"{run_dir}: no config.yaml, not a pneumoscan run folder")
    try:
        return config_from_dict(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, TypeError, ValueError) as e:
        raise ResumeError(f"{path}: unreadable run config ({e})") from None


def last_checkpoint(run_dir: str | Path) -> Path:
    """RUN/lightning/last.ckpt, checked to be a whole, loadable checkpoint."""
    path = Path(run_dir) / LAST
    if not path.is_file():
        raise ResumeError(f"{path}: no last checkpoint to resume from (the run was killed "
                          f"before its first epoch ended; start it again without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (truncated zip, bad pickle, EOF: all mean corrupt)
        raise ResumeError(f"{path}: corrupt or truncated checkpoint, cannot resume "
                          f"({type(e).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or "state_dict" not in state or "loops" not in state:
        raise ResumeError(f"{path}: not a Lightning training checkpoint, cannot resume")
    return path


def check_same_split(run_dir: Path, records: list[Record]) -> None:
    """The resumed run must train and validate on the images the killed one used."""
    with open(run_dir / "split.csv", newline="", encoding="utf-8",
              errors="surrogateescape") as f:
        before = sorted(r["path"] for r in csv.DictReader(f))
    if before != sorted(r.path for r in records):
        raise ResumeError(f"{run_dir}: the data differs from the interrupted run's split.csv; "
                          f"resume with the same --data")

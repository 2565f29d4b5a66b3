"""An ensemble folder (ensemble.json) behind the Predictor interface: its members' calibrated
class probabilities averaged (torch members; built by training/ensemble.py).

The pneumonia probability is the mean of the members' 1 - P(NORMAL), the mean of p for binary
members. ensemble.json names its members by path relative to itself, with the sha256 of each
member's weights, checked at load: a member retrained in place is an error, not a silent new
model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core import contract
from ..core.contract import ENSEMBLE, Checkpoint, CheckpointError
from ..models.weights import load as load_weights
from .predictor import Predictor
from .torch_backend import torch_predictor

FILE = ENSEMBLE
FORMAT = "pneumoscan-ensemble/1"
# Preprocessing keys that decide how a file becomes the uint8 array every member then reads;
# normalisation (mean/std/channels) may differ, each member applies its own.
_DECODING = ("input_size", "interpolation", "resize")


class EnsembleError(CheckpointError):
    """An ensemble that cannot be built or loaded as asked."""


def _folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name == FILE else p


def _check_members(ckpts: list[Checkpoint], names: list[str]) -> None:
    """Members must share labels and image decoding; the error names the first that does not."""
    first = ckpts[0]
    for ckpt, name in zip(ckpts[1:], names[1:]):
        if ckpt.labels != first.labels:
            raise EnsembleError(f"member {name}: labels {ckpt.labels} differ from {names[0]}'s "
                                f"{first.labels}; an ensemble averages the same classes")
        for key in _DECODING:
            a, b = getattr(ckpt.preprocessing, key), getattr(first.preprocessing, key)
            if a != b:
                raise EnsembleError(f"member {name}: preprocessing {key} {a!r} differs from "
                                    f"{names[0]}'s {b!r}; members must read the same images")


def _ensemble_checkpoint(members: list[Predictor], meta: dict, folder: Path) -> Checkpoint:
    """The contract the callers of a Predictor read (labels, preprocessing, threshold, config
    for rebuilding the val split); its model_name says what it is."""
    first = members[0].ckpt
    names = sorted({m.ckpt.model_name for m in members})
    extra = {k: v for k, v in meta.items()
             if k not in ("labels", "preprocessing", "threshold", "val_metrics")}
    extra["path"] = str(folder)
    return Checkpoint(f"ensemble of {len(members)} {'/'.join(names)}", list(first.labels),
                      replace(first.preprocessing), float(meta["threshold"]),
                      meta.get("val_metrics", {}), dict(first.config), extra)


class EnsembleBackend:
    """Several members' predictors behind one backend that scores by itself: the mean of
    their (N,) pneumonia probabilities and of their (N, K) calibrated class probabilities.
    No Grad-CAM or OOD gate (model is None, no forward)."""

    name = "torch"
    model = None

    def __init__(self, members: list[Predictor]):
        self.members = members

    def class_scores(self, images: np.ndarray, batch_size: int = 32
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> mean pneumonia and class probabilities; NaN OOD scores."""
        parts = [m.class_scores(images, batch_size) for m in self.members]
        probs = np.mean([p[0] for p in parts], axis=0)
        return probs, np.mean([p[1] for p in parts], axis=0), np.full(len(probs), np.nan)


def load_ensemble(path: str | Path, bf16: bool = False, tta: bool = False) -> Predictor:
    """A Predictor holding the EnsembleBackend of ensemble.json's members; `tta` adds
    test-time augmentation to an ensemble built without it (the stored threshold was then
    chosen without it).

    Examples:
        >>> p = load_ensemble("runs/seeds/ensemble")  # any --model accepts the folder
        >>> p.predict(["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])[0].label  # doctest: +SKIP
        'NORMAL'
    """
    folder = _folder(path)
    try:
        meta = json.loads((folder / FILE).read_text())
        if meta.get("format") != FORMAT:
            raise EnsembleError(f"{folder / FILE}: unknown format {meta.get('format')!r}")
        entries = meta["members"]
        float(meta["threshold"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, EnsembleError):
            raise
        raise EnsembleError(f"{folder / FILE}: malformed ensemble file ({e})") from None
    tta = tta or bool(meta.get("tta", False))
    members = []
    for entry in entries:
        member = folder / entry["path"]
        weights_file = member / contract.WEIGHTS
        if not weights_file.is_file():
            raise EnsembleError(f"{folder / FILE}: member {entry['path']}: no "
                                f"{contract.WEIGHTS} at {member}")
        sha = contract.file_sha256(weights_file)
        if sha != entry["weights_sha256"]:
            raise EnsembleError(
                f"{folder / FILE}: member {entry['path']}: {contract.WEIGHTS} has sha256 "
                f"{sha[:12]}..., not the {entry['weights_sha256'][:12]}... the ensemble was "
                f"built and thresholded with; rebuild it with 'pneumoscan ensemble'")
        members.append(torch_predictor(*load_weights(member), bf16=bf16, tta=tta))
    _check_members([m.ckpt for m in members], [e["path"] for e in entries])
    return Predictor(EnsembleBackend(members),
                     _ensemble_checkpoint(members, meta, folder.resolve()), tta=tta)

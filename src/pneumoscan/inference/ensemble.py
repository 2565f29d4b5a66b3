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


def _read(file: Path) -> tuple[dict, list[dict]]:
    """ensemble.json's content and its member entries, each checked to have a string `path`
    and `weights_sha256`; any other shape is an EnsembleError naming the key."""
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnsembleError(f"{file}: malformed ensemble file ({e})") from None
    if not isinstance(meta, dict):
        raise EnsembleError(f"{file}: malformed ensemble file (not a JSON object)")
    if meta.get("format") != FORMAT:
        raise EnsembleError(f"{file}: unknown format {meta.get('format')!r} (key 'format' "
                            f"must be {FORMAT!r})")
    threshold = meta.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
            0 <= threshold <= 1):
        raise EnsembleError(f"{file}: key 'threshold' must be a number in [0, 1], not "
                            f"{threshold!r}")
    entries = meta.get("members")
    if not isinstance(entries, list) or not entries:
        raise EnsembleError(f"{file}: key 'members' must list at least one member, not "
                            f"{entries!r}")
    for i, entry in enumerate(entries, 1):
        for key in ("path", "weights_sha256"):
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
                raise EnsembleError(f"{file}: member {i} of 'members' has no string {key!r}")
    return meta, entries


def member_folder(folder: Path, relative: str) -> Path:
    """A member's run folder, `relative` to the ensemble folder. It must lie inside the folder
    that holds the ensemble folder (where `train seeds=` writes the members beside it, as
    '../seed-0'): an absolute path or one that climbs out of it would make the ensemble read
    files from anywhere on the machine."""
    root = folder.resolve().parent
    member = (folder / relative).resolve()
    if Path(relative).is_absolute() or not member.is_relative_to(root) or member == root:
        raise EnsembleError(f"{folder / FILE}: member {relative!r} is not inside {root}: "
                            f"members must lie beside the ensemble folder (an absolute "
                            f"path or one that leaves that folder is refused)")
    return member


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
    meta, entries = _read(folder / FILE)
    tta = tta or bool(meta.get("tta", False))
    members = []
    for entry in entries:
        member = member_folder(folder, entry["path"])
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

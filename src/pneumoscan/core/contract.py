"""The checkpoint contract: model.json beside the weights, read without PyTorch.

The JSON carries everything later commands need (model name, labels, preprocessing, decision
threshold, temperature, the OOD gate, validation metrics, the resolved config, version and git
SHA), so predict, evaluate, explain, export and serve never re-declare any of it. A run folder
holds model.json, model.safetensors (the weights, read by models/ with torch), optionally
ood.safetensors (the gate's statistics) and model.onnx (the graph ONNX Runtime scores with).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from safetensors.numpy import load_file

from .errors import CheckpointError
from .preprocessing import Preprocessing

WEIGHTS, META = "model.safetensors", "model.json"
OOD = "ood.safetensors"  # statistics of the out-of-distribution gate, if fitted
GRAPH = "model.onnx"     # the exported fp32 graph shipped beside the weights, if any
ENSEMBLE = "ensemble.json"  # an ensemble folder's file instead (inference/ensemble.py)
FORMAT = "pneumoscan-checkpoint/1"

__all__ = ["Checkpoint", "CheckpointError", "FORMAT", "GRAPH", "META", "OOD", "WEIGHTS",
           "check_sha256", "default_model_dir", "file_sha256", "is_ensemble", "read", "resolve",
           "shipped_models"]


@dataclass
class Checkpoint:
    model_name: str
    labels: list[str]
    preprocessing: Preprocessing
    threshold: float
    val_metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # version, git SHA, hashes, timings
    # T of sigmoid(logit / T) (softmax for K classes), fitted on val; 1 before calibration.
    temperature: float = 1.0
    # The OOD gate's model.json entry (threshold, method, sha256 of OOD, ...); None: no gate.
    ood: dict | None = None
    # The gate's arrays, read from OOD beside model.json.
    ood_stats: dict | None = field(default=None, repr=False, compare=False)

    @property
    def ood_gate(self) -> dict | None:
        """The OOD gate's entry, None without a gate (the same as `ood`)."""
        return self.ood

    @property
    def binary(self) -> bool:
        """One logit (NORMAL, PNEUMONIA) rather than one per class."""
        return len(self.labels) == 2

    def to_json(self) -> dict:
        return {"format": FORMAT, "model_name": self.model_name, "labels": self.labels,
                "preprocessing": self.preprocessing.to_dict(), "threshold": self.threshold,
                "val_metrics": self.val_metrics, "config": self.config,
                "temperature": self.temperature,
                **({"ood": self.ood} if self.ood is not None else {}), **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> Checkpoint:
        """The contract of a model.json dict, every key that changes a decision checked:
        labels (NORMAL among them), preprocessing (known keys), threshold in [0, 1],
        temperature > 0, the OOD gate's threshold (CheckpointError, naming the key)."""
        core = {"format", "model_name", "labels", "preprocessing", "threshold", "val_metrics",
                "config", "temperature", "ood"}
        ckpt = cls(d["model_name"], list(d["labels"]),
                   Preprocessing.from_dict(d["preprocessing"]), float(d["threshold"]),
                   d.get("val_metrics", {}), d.get("config", {}),
                   {k: v for k, v in d.items() if k not in core},
                   d.get("temperature", 1.0), d.get("ood"))
        ckpt.validate()
        ckpt.temperature = float(ckpt.temperature)
        return ckpt

    def validate(self) -> None:
        def bad(key: str, why: str):
            return CheckpointError(f"model contract: {key} {why}")

        if len(self.labels) < 2 or "NORMAL" not in self.labels or \
                len(set(self.labels)) != len(self.labels):
            raise bad("labels", f"{self.labels} must name NORMAL and at least one other class, "
                                f"each once")
        if len(self.labels) == 2 and self.labels != ["NORMAL", "PNEUMONIA"]:
            # one logit, P(PNEUMONIA): the order is the training convention, not a choice
            raise bad("labels", f"{self.labels} of a binary model must be "
                                f"['NORMAL', 'PNEUMONIA'] (its one logit is PNEUMONIA's)")
        for key, why in self.preprocessing.problems():
            raise bad(f"preprocessing.{key}", why)
        if not 0.0 <= self.threshold <= 1.0:
            raise bad("threshold", f"{self.threshold} is not a probability")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise bad("temperature", f"{t!r} is not a positive number")
        gate = self.ood
        if gate is not None:
            g = gate.get("threshold") if isinstance(gate, dict) else None
            if not isinstance(g, int | float) or not math.isfinite(g):
                raise bad("ood.threshold", f"{g!r} is not a number")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def shipped_models() -> dict[str, Path]:
    """The models inside the package, by name: default (binary), etiology (three classes)."""
    root = Path(str(resources.files("pneumoscan") / "weights"))
    return {d.name: d for d in sorted(root.iterdir()) if (d / META).is_file()}


def default_model_dir() -> Path:
    return shipped_models()["default"]


def resolve(path: str | Path | None) -> Path:
    """Run folder, model.json or model.safetensors -> the folder; None -> the shipped model;
    the name of a shipped model (`etiology`) that is not a path here -> that model."""
    p = default_model_dir() if path is None else Path(path)
    if path is not None and not p.exists() and str(path) in shipped_models():
        p = shipped_models()[str(path)]
    if p.is_file() and p.name in (WEIGHTS, META):
        p = p.parent
    if not (p / META).is_file() or not (p / WEIGHTS).is_file():
        raise CheckpointError(f"{p}: not a pneumoscan model (expected {META} and {WEIGHTS} "
                              f"in that folder; train one with 'pneumoscan train')")
    return p


def is_ensemble(path: str | Path | None) -> bool:
    """True for a folder holding ensemble.json (or that file itself)."""
    if path is None:
        return False
    p = Path(path)
    return (p / ENSEMBLE).is_file() or (p.name == ENSEMBLE and p.is_file())


def check_sha256(path: Path, expected: str | None, key: str) -> None:
    """A file the contract names by checksum must be that file: a tampered or swapped weights
    file (e.g. a negated classifier) would otherwise silently invert decisions."""
    if not expected or not path.is_file():
        return  # older contracts carry no checksum; a missing file is reported when read
    found = file_sha256(path)
    if found != expected:
        raise CheckpointError(f"{path}: sha256 {found[:12]}... does not match {key} "
                              f"{expected[:12]}... in {META}: the file was changed after the "
                              f"model was saved; refusing to load it")


def read(folder: str | Path) -> Checkpoint:
    """The contract in folder/model.json, with the OOD gate's statistics if it declares one;
    extra["path"] is set to the folder. Reads no weights."""
    folder = Path(folder)  # a str crashed in the error path below (str / str)
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"unknown format {meta.get('format')!r}")
        ckpt = Checkpoint.from_json(meta)
    except CheckpointError as e:
        raise CheckpointError(f"{folder / META}: {e}") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{folder / META}: malformed checkpoint metadata ({e})") from None
    ckpt.extra["path"] = str(folder)
    if ckpt.ood_gate is not None and not (folder / OOD).is_file():
        # A model.json copied without its gate (e.g. beside a pickle): predict without one,
        # but say so. A present but unreadable file is an error below.
        warnings.warn(f"{folder / OOD} is missing: predicting without the out-of-distribution "
                      f"gate that {META} declares", stacklevel=3)
        ckpt.ood = None
    if ckpt.ood_gate is not None:  # older checkpoints have no gate: ood_stats stays None
        try:
            ckpt.ood_stats = load_file(folder / OOD)
        except Exception as e:  # noqa: BLE001 (SafetensorError, OSError)
            raise CheckpointError(f"{folder / OOD}: unreadable OOD statistics ({e})") from None
        check_sha256(folder / OOD, ckpt.ood_gate.get("sha256"), "ood.sha256")
    return ckpt

"""The only place weights are written or read: safetensors weights + a JSON contract beside them.

The JSON carries everything later commands need (model name, labels, preprocessing, decision
threshold, validation metrics, the resolved config, version and git SHA), so predict, evaluate,
explain, export and serve never re-declare any of it. Loading never unpickles, except a
.pt/.ckpt file the caller explicitly allows, and then with torch's weights-only unpickler.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .models import create_model
from .transforms import Preprocessing

WEIGHTS, META = "model.safetensors", "model.json"
OOD = "ood.safetensors"  # statistics of the out-of-distribution gate (ood.py), if fitted
FORMAT = "pneumoscan-checkpoint/1"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


class CheckpointError(ValueError):
    """A checkpoint path that does not hold a usable pneumoscan model."""


@dataclass
class Checkpoint:
    model_name: str
    labels: list[str]
    preprocessing: Preprocessing
    threshold: float
    val_metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # version, git SHA, hashes, timings
    # The gate's arrays from OOD (its threshold etc. are extra["ood"] in model.json).
    ood_stats: dict | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"format": FORMAT, "model_name": self.model_name, "labels": self.labels,
                "preprocessing": self.preprocessing.to_dict(), "threshold": self.threshold,
                "val_metrics": self.val_metrics, "config": self.config, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> Checkpoint:
        core = {"format", "model_name", "labels", "preprocessing", "threshold", "val_metrics",
                "config"}
        return cls(d["model_name"], list(d["labels"]),
                   Preprocessing.from_dict(d["preprocessing"]), float(d["threshold"]),
                   d.get("val_metrics", {}), d.get("config", {}),
                   {k: v for k, v in d.items() if k not in core})


def git_state() -> dict:
    """The commit of the package's source tree and whether that tree has uncommitted changes;
    None for both outside a git checkout (an installed wheel)."""
    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                                 cwd=Path(__file__).parent)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".") if sha else None
    return {"git_sha": sha, "git_dirty": bool(status) if sha else None}


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save(run_dir: str | Path, model: nn.Module, ckpt: Checkpoint,
         dtype: torch.dtype = torch.float32) -> Path:
    """Write model.safetensors (+ model.json) into run_dir; returns the JSON path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    # Temp file + rename: a kill mid-write never leaves a half-written model behind.
    tmp = run_dir / f".{WEIGHTS}.tmp-{os.getpid()}"
    save_file(state, tmp)
    os.replace(tmp, run_dir / WEIGHTS)
    ckpt.extra.setdefault("package_version", __version__)
    for key, value in git_state().items():  # fit() records these when training starts
        ckpt.extra.setdefault(key, value)
    ckpt.extra.update({"weights_dtype": str(dtype).removeprefix("torch."),
                       "weights_sha256": file_sha256(run_dir / WEIGHTS)})
    meta = run_dir / META
    tmp = run_dir / f".{META}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(ckpt.to_json(), indent=2, default=str) + "\n")
    os.replace(tmp, meta)
    return meta


def save_ood(run_dir: str | Path, stats: dict, meta: dict) -> Path:
    """Store the out-of-distribution gate of a saved run: OOD beside the weights and its
    threshold as "ood" in model.json; the weights are not touched."""
    run_dir = resolve(run_dir)
    tmp = run_dir / f".{OOD}.tmp-{os.getpid()}"
    save_file({k: torch.from_numpy(v).contiguous() for k, v in stats.items()}, tmp)
    os.replace(tmp, run_dir / OOD)
    data = json.loads((run_dir / META).read_text())
    data["ood"] = {**meta, "sha256": file_sha256(run_dir / OOD)}
    tmp = run_dir / f".{META}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, run_dir / META)
    return run_dir / OOD


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


def _pickled_weights(path: Path, allow_pickle: bool) -> tuple[dict, Path]:
    """Tensors from a PyTorch pickle (.pt/.ckpt) and the folder of the model.json describing
    them (beside it, or one level up for a run's lightning/ folder). Refused unless allowed;
    then read by torch's weights-only unpickler, which builds tensors and plain containers
    and refuses any other callable, so a crafted pickle cannot run code."""
    if not allow_pickle:
        raise CheckpointError(
            f"{path}: refusing to load a pickle file ({path.suffix}): unpickling can run "
            f"arbitrary code. pneumoscan loads {WEIGHTS} + {META}; if you trust this file, "
            f"pass --allow-pickle (load(..., allow_pickle=True)) to read only its tensors")
    folder = next((d for d in (path.parent, path.parent.parent) if (d / META).is_file()), None)
    if folder is None:
        raise CheckpointError(f"{path}: no {META} beside it to say what model, labels, "
                              f"preprocessing and threshold these weights belong to")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (UnpicklingError, RuntimeError, EOFError, zip errors...)
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not loadable as weights only ({reason})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    if all(k.startswith("model.") for k in state):  # a Lightning checkpoint of LitClassifier
        state = {k.removeprefix("model."): v for k, v in state.items()}
    return state, folder


def _check_sha256(path: Path, expected: str | None, key: str) -> None:
    """A file the contract names by checksum must be that file: a tampered or swapped weights
    file (e.g. a negated classifier) would otherwise silently invert decisions."""
    if not expected or not path.is_file():
        return  # older contracts carry no checksum; a missing file is reported when read
    found = file_sha256(path)
    if found != expected:
        raise CheckpointError(f"{path}: sha256 {found[:12]}... does not match {key} "
                              f"{expected[:12]}... in {META}: the file was changed after the "
                              f"model was saved; refusing to load it")


def load(path: str | Path | None = None,
         allow_pickle: bool = False) -> tuple[nn.Module, Checkpoint]:
    """Load a model in eval mode (float32, CPU) and its checkpoint contract.

    Args:
        path: run folder, model.json or model.safetensors (None: the shipped model); a
            .pt/.ckpt pickle only with allow_pickle.
        allow_pickle: read a pickle's tensors with torch.load(weights_only=True).
    """
    pickled = path is not None and Path(path).suffix.lower() in PICKLE_SUFFIXES
    state = None
    if pickled:
        state, folder = _pickled_weights(Path(path), allow_pickle)
    else:
        folder = resolve(path)
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{folder / META}: unknown format {meta.get('format')!r}")
        ckpt = Checkpoint.from_json(meta)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / META}: malformed checkpoint metadata ({e})") from None
    num_outputs = 1 if len(ckpt.labels) == 2 else len(ckpt.labels)
    model = create_model(ckpt.model_name, pretrained=False, num_outputs=num_outputs)
    if state is None:
        try:
            state = load_file(folder / WEIGHTS)
        except Exception as e:  # noqa: BLE001 (SafetensorError, OSError)
            raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights ({e})") from None
        _check_sha256(folder / WEIGHTS, ckpt.extra.get("weights_sha256"), "weights_sha256")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path or folder}: weights do not fit {ckpt.model_name} "
                              f"({str(e).splitlines()[0]})") from None
    ckpt.extra["path"] = str(folder)
    if ckpt.extra.get("ood") is not None and not (folder / OOD).is_file():
        # A model.json copied without its gate (e.g. beside a pickle): predict without one,
        # but say so. A present but unreadable file is an error below.
        warnings.warn(f"{folder / OOD} is missing: predicting without the out-of-distribution "
                      f"gate that {META} declares", stacklevel=2)
        ckpt.extra["ood"] = None
    if ckpt.extra.get("ood") is not None:  # older checkpoints have no gate: ood stays None
        try:
            ckpt.ood_stats = {k: v.numpy() for k, v in load_file(folder / OOD).items()}
        except Exception as e:  # noqa: BLE001 (SafetensorError, OSError)
            raise CheckpointError(f"{folder / OOD}: unreadable OOD statistics ({e})") from None
        _check_sha256(folder / OOD, ckpt.extra["ood"].get("sha256"), "ood.sha256")
    return model.eval(), ckpt

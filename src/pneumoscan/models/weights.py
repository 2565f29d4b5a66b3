"""The only place torch weights are written or read: model.safetensors beside the contract.

The contract itself (model.json, read without torch) is core/contract.py. Loading never
unpickles, except a .pt/.ckpt file the caller explicitly allows, and then with torch's
weights-only unpickler.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..core import contract
from ..core.contract import (  # noqa: F401 (the contract's names, for the users of load/save)
    FORMAT,
    GRAPH,
    META,
    OOD,
    WEIGHTS,
    Checkpoint,
    CheckpointError,
    default_model_dir,
    file_sha256,
    resolve,
    shipped_models,
)
from .registry import create_model

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


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
    ckpt = contract.read(folder)
    num_outputs = 1 if ckpt.binary else len(ckpt.labels)
    model = create_model(ckpt.model_name, pretrained=False, num_outputs=num_outputs)
    if state is None:
        try:
            state = load_file(folder / WEIGHTS)
        except Exception as e:  # noqa: BLE001 (SafetensorError, OSError)
            raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights ({e})") from None
        contract.check_sha256(folder / WEIGHTS, ckpt.extra.get("weights_sha256"),
                              "weights_sha256")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path or folder}: weights do not fit {ckpt.model_name} "
                              f"({str(e).splitlines()[0]})") from None
    return model.eval(), ckpt

"""Which runtime scores images: ONNX Runtime fp32 when it reproduces the checkpoint, else torch.

ONNX Runtime fp32 is the default of `pneumoscan predict` because it is the fastest form that
keeps every label (bench: ~2.7x torch fp32 eager end to end on full-size originals, 0 label
flips and max |dp| ~1e-6 on the 624 test images). The graph is exported once per checkpoint,
parity-checked against PyTorch on real images (the first readable inputs of that call) and
cached under cache_dir(), keyed by the sha256 of the weights and of what the graph bakes in
(model name, preprocessing, export format). The contract the graph does not hold (labels,
temperature, threshold, OOD gate) is always read from the checkpoint itself, so `pneumoscan
calibrate` or `fit-ood` never leave a stale cached copy in charge. If onnxruntime is missing or
the export fails, prediction goes on with PyTorch after a one-line notice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import checkpoint
from .predict import Predictor

CACHE_ENV = "PNEUMOSCAN_CACHE"
EXPORT_FORMAT = 1  # bump when the exported graph's inputs or outputs change
N_PARITY = 16      # readable inputs the export is checked on (first ones of the call)
RUNTIMES = ("auto", "torch", "onnx")


def cache_dir() -> Path:
    """$PNEUMOSCAN_CACHE, else $XDG_CACHE_HOME/pneumoscan, else ~/.cache/pneumoscan."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumoscan"


def graph_key(model, ckpt: checkpoint.Checkpoint) -> str:
    """sha256 of the weights as loaded (safetensors or an allowed pickle alike) and of the
    parts of the contract that the exported graph bakes in."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32 if tensor.is_floating_point() else tensor.dtype)
                 .contiguous().numpy().tobytes())
    h.update(json.dumps({"model": ckpt.model_name, "format": EXPORT_FORMAT,
                         "preprocessing": ckpt.preprocessing.to_dict()},
                        sort_keys=True).encode())
    return h.hexdigest()


def parity_images(paths: list[str], ckpt: checkpoint.Checkpoint, n: int = N_PARITY) -> np.ndarray:
    """Up to n decoded images from the first 4n paths (unreadable ones skipped)."""
    from .transforms import load_many

    prep = ckpt.preprocessing
    return load_many(paths[:4 * n], prep.input_size, prep.interpolation,
                     storage_quality=prep.storage_quality)[0][:n]


def cached_onnx(model, ckpt: checkpoint.Checkpoint, images: Callable[[], np.ndarray]) -> Path:
    """The cached fp32 export of this checkpoint, exported (and parity-checked on `images()`,
    called only then) if absent. Written under a temporary name and renamed, so a concurrent
    or interrupted export never leaves a partial file under the final name."""
    from .export import ExportError, export_model

    path = cache_dir() / f"{ckpt.model_name}-{graph_key(model, ckpt)}.onnx"
    if path.is_file():
        return path
    sample = images()
    if len(sample) == 0:
        raise ExportError("no readable input image to check the export's parity on")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
    try:
        export_model(model, ckpt, tmp, sample)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def make_predictor(model_path: str | Path | None = None, runtime: str = "auto",
                   paths: list[str] | None = None, onnx_file: str | Path | None = None,
                   bf16: bool = False, allow_pickle: bool = False,
                   notify: Callable[[str], None] = _say, tta: bool = False) -> Predictor:
    """The predictor `pneumoscan predict` uses.

    Args:
        model_path: checkpoint (None: the shipped model).
        runtime: 'auto' (ONNX Runtime fp32 if it can be set up, else torch with a notice),
            'torch', or 'onnx' (errors instead of falling back).
        paths: the images about to be scored; the first readable ones check a new export.
        onnx_file: an exported file to use as it is (its metadata is the contract).
        bf16: torch bf16 autocast; with runtime 'auto' it selects torch.
        allow_pickle: see checkpoint.load.
        tta: average over test-time augmentations (torch only; an ensemble folder is torch
            too: one ONNX graph carries one model).

    Examples:
        >>> p = make_predictor(None, paths=["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])
        >>> type(p).__name__
        'OnnxPredictor'
    """
    from .export import ExportError
    from .onnx_predict import OnnxPredictor

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    from .ensemble import is_ensemble

    if tta or is_ensemble(model_path):
        if runtime == "onnx":
            raise ExportError("--runtime onnx: test-time augmentation and ensembles run on "
                              "the torch runtime only")
        return Predictor.from_checkpoint(model_path, bf16=bf16, allow_pickle=allow_pickle,
                                         tta=tta)
    if onnx_file is not None and runtime != "torch":
        return OnnxPredictor.from_onnx(onnx_file)
    model, ckpt = checkpoint.load(model_path, allow_pickle=allow_pickle)
    if runtime == "torch" or (runtime == "auto" and bf16):
        return Predictor(model, ckpt, bf16=bf16)
    try:
        import onnxruntime as ort

        file = cached_onnx(model, ckpt, lambda: parity_images(paths or [], ckpt))
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 (ImportError, ExportError, ORT's own errors...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if runtime == "onnx":
            raise ExportError(f"--runtime onnx: cannot set up ONNX Runtime ({reason})") from None
        notify(f"pneumoscan: ONNX Runtime not used ({reason}); predicting with PyTorch")
        return Predictor(model, ckpt)
    return OnnxPredictor(session, ckpt, model)

"""Which backend scores images: ONNX Runtime fp32 when a graph reproduces the checkpoint, else
torch.

ONNX Runtime fp32 is the default of `pneumoscan predict` and `serve` because it is the
fastest form that keeps every label (0 label flips and max |dp| ~1e-6 on the 624 test
images) and needs no PyTorch. Where the graph comes from, in order:

1. model.onnx in the run folder (the shipped models have one), used when its metadata names
   the sha256 of the folder's model.safetensors and the same preprocessing: no torch needed.
2. Otherwise (the training extra): exported once per checkpoint, parity-checked against
   PyTorch on real images (the first readable inputs of that call) and cached under
   cache_dir(), keyed by the sha256 of the weights and of what the graph bakes in.

The contract the graph does not hold (labels, temperature, threshold, OOD gate) is always read
from model.json itself, so `pneumoscan calibrate` or `fit-ood` never leave a stale copy in
charge. If the export fails, prediction goes on with PyTorch after a one-line notice.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core import contract
from ..core.contract import Checkpoint
from ..core.errors import ExportError, NeedsTrainingExtra
from ..data.decode import load_many
from .onnx import OnnxBackend, open_session, read_metadata
from .predictor import Predictor

N_PARITY = 16      # readable inputs the export is checked on (first ones of the call)
RUNTIMES = ("auto", "torch", "onnx")
GRAPH_KEYS = ("input_size", "mean", "std", "channels")  # the preprocessing inside a graph


def parity_images(paths: list[str], ckpt: Checkpoint, n: int = N_PARITY) -> np.ndarray:
    """Up to n decoded images from the first 4n paths (unreadable ones skipped)."""
    prep = ckpt.preprocessing
    return load_many(paths[:4 * n], prep.input_size, prep.interpolation,
                     storage_quality=prep.storage_quality)[0][:n]


def shipped_graph(folder: Path) -> Path | None:
    """folder/model.onnx if it was exported from folder's model.safetensors with the same
    normalisation (what the graph bakes in; decoding happens before it), else None."""
    graph = folder / contract.GRAPH
    if not graph.is_file():
        return None
    try:
        meta = read_metadata(graph)
        ours = json.loads((folder / contract.META).read_text())
    except Exception:  # noqa: BLE001 (a corrupt or foreign file: not this folder's graph)
        return None
    baked = [meta.get("preprocessing", {}).get(k) == ours.get("preprocessing", {}).get(k)
             for k in GRAPH_KEYS]
    same = (meta.get("weights_sha256") == contract.file_sha256(folder / contract.WEIGHTS)
            and all(baked) and meta.get("labels") == ours.get("labels"))
    return graph if same else None


def _torch_runtime(what: str):
    """The torch-side modules, or NeedsTrainingExtra naming `what` needed them."""
    try:
        from ..models import weights as checkpoint
        from . import torch_backend
    except ImportError as e:
        raise NeedsTrainingExtra(what, e.name or "torch") from None
    return checkpoint, torch_backend


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def make_predictor(model_path: str | Path | None = None, runtime: str = "auto",
                   paths: list[str] | None = None, onnx_file: str | Path | None = None,
                   bf16: bool = False, allow_pickle: bool = False,
                   notify: Callable[[str], None] = _say, tta: bool = False,
                   low_memory: bool = False) -> Predictor:
    """The predictor `pneumoscan predict` and `serve` use.

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
        low_memory: ONNX Runtime without its memory arena (serve; see onnx.open_session).

    Examples:
        >>> p = make_predictor(None, paths=["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])
        >>> p.runtime
        'onnxruntime'
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if tta or contract.is_ensemble(model_path):
        if runtime == "onnx":
            raise ExportError("--runtime onnx: test-time augmentation and ensembles run on "
                              "the torch runtime only")
        _torch_runtime("test-time augmentation or an ensemble")
        from .ensemble import load_ensemble

        if contract.is_ensemble(model_path):
            return load_ensemble(model_path, bf16=bf16, tta=tta)
    elif onnx_file is not None and runtime != "torch":
        return Predictor(*OnnxBackend.from_file(onnx_file))
    pickled = model_path is not None and Path(model_path).suffix.lower() in (
        ".pt", ".pth", ".ckpt", ".pkl", ".bin")
    wants_torch = tta or runtime == "torch" or (runtime == "auto" and bf16)
    if not wants_torch and not pickled:
        folder = contract.resolve(model_path)
        # Weights changed after saving are refused here as torch refuses them (the graph
        # would otherwise just not match them and the torch path be tried).
        contract.check_sha256(folder / contract.WEIGHTS, json.loads(
            (folder / contract.META).read_text()).get("weights_sha256"), "weights_sha256")
        graph = shipped_graph(folder)
        if graph is not None:
            ckpt = contract.read(folder)
            return Predictor(OnnxBackend(open_session(graph, low_memory=low_memory), graph),
                             ckpt)
    checkpoint, torch_backend = _torch_runtime(
        "the torch runtime" if wants_torch else
        f"scoring a model without its exported {contract.GRAPH} (make one with 'pneumoscan "
        f"export --out RUN/{contract.GRAPH}')")
    model, ckpt = checkpoint.load(model_path, allow_pickle=allow_pickle)
    if wants_torch:
        return Predictor(torch_backend.TorchBackend(model, ckpt, bf16=bf16), ckpt, tta=tta)
    try:
        from .export import cached_onnx  # torch and onnx: the training extra

        file = cached_onnx(model, ckpt, lambda: parity_images(paths or [], ckpt))
        session = open_session(file, low_memory=low_memory)
    except Exception as e:  # noqa: BLE001 (ImportError, ExportError, ORT's own errors...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if runtime == "onnx":
            raise ExportError(f"--runtime onnx: cannot set up ONNX Runtime ({reason})") from None
        notify(f"pneumoscan: ONNX Runtime not used ({reason}); predicting with PyTorch")
        return Predictor(torch_backend.TorchBackend(model, ckpt), ckpt)
    return Predictor(OnnxBackend(session, file), ckpt)


def load_torch(path: str | Path | None = None, bf16: bool = False, allow_pickle: bool = False,
               tta: bool = False) -> Predictor:
    """A run folder (or its model.json), or an ensemble folder (ensemble.json), on the torch
    runtime (the training extra).

    Examples:
        >>> p = load_torch()          # the shipped model
        >>> [r.label for r in p.predict(["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])]
        ['NORMAL']
    """
    return make_predictor(path, "torch", bf16=bf16, allow_pickle=allow_pickle, tta=tta)

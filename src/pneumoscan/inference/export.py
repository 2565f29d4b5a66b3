"""ONNX export of a checkpoint, with its contract as metadata and a parity check on real images.

The graph takes the uint8 gray batch (B, 1, S, S) that `transforms.load_gray` produces and does
the normalisation inside (the same `to_model_input` that training and prediction use), so an
ONNX caller cannot drift from the checkpoint's preprocessing. It has two outputs:
`logit` (B, 1) for a binary model or (B, K) class logits in the order of the metadata's
`labels` for a K-class one (metadata `pneumoscan.output` says which and how to get
probabilities), and `features` (B, C, h, w), the registry's Grad-CAM target layer, so a CAM
heatmap needs no PyTorch: cam = relu(sum_c w_c * features[:, c]) with w the classifier
weights stored in the metadata under `pneumoscan.cam_weights` (timm models).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core import progress
from ..core.contract import Checkpoint
from ..core.decisions import class_probabilities, probabilities_from_logits
from ..core.errors import ExportError
from ..core.paths import CACHE_ENV, cache_dir  # noqa: F401 (export.cache_dir)
from ..core.preprocessing import Preprocessing
from ..data.decode import load_many
from ..data.runs import split_of_run
from ..models import weights as checkpoint
from ..models.registry import get_spec
from ..models.transforms import to_model_input
from .onnx import (  # noqa: F401 (the graph's names, for export's users)
    FEATURES,
    INPUT,
    LOGIT,
    META_KEY,
    onnx_logits,
    onnx_outputs,
    output_contract,
    read_metadata,
)
from .onnx import refuse_ensemble as _refuse_ensemble
from .torch_backend import predict_logits

log = logging.getLogger(__name__)

N_PARITY, N_CALIBRATION = 64, 400  # carved-val images; the test split is never used here
PARITY_TOLERANCE = 1e-3  # max |probability difference| vs PyTorch for fp32


EXPORT_FORMAT = 1  # bump when the exported graph's inputs or outputs change


def graph_key(model, ckpt: Checkpoint) -> str:
    """sha256 of the weights as loaded (safetensors or an allowed pickle alike) and of the
    parts of the contract that the exported graph bakes in."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32 if tensor.is_floating_point() else tensor.dtype)
                 .contiguous().numpy().tobytes())
    h.update(json.dumps({"model": ckpt.model_name, "format": EXPORT_FORMAT,
                         "preprocessing": ckpt.preprocessing.to_dict()},
                        sort_keys=True).encode())
    return h.hexdigest()


def cached_onnx(model, ckpt: Checkpoint, images: Callable[[], np.ndarray]) -> Path:
    """The cached fp32 export of this checkpoint, exported (and parity-checked on `images()`,
    called only then) if absent. Written under a temporary name and renamed, so a concurrent
    or interrupted export never leaves a partial file under the final name."""
    from .export import export_model  # torch and onnx: the training extra

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


class _WithFeatures(nn.Module):
    """uint8 gray -> (logit, target-layer features), preprocessing inside."""

    def __init__(self, model: nn.Module, target: nn.Module, prep: Preprocessing):
        super().__init__()
        self.model, self.target, self.prep = model, target, prep

    def forward(self, x: torch.Tensor):
        store = {}
        handle = self.target.register_forward_hook(lambda m, i, o: store.update(f=o))
        try:
            logit = self.model(to_model_input(x, self.prep))
        finally:
            handle.remove()
        return logit, store["f"]


def cam_weights(model: nn.Module) -> dict | None:
    """Classifier weight (outputs, C) and bias of a model whose head is pool -> one Linear on
    the target layer (timm EfficientNet); None for other heads (compute CAM another way)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        return None
    return {"weight": head.weight.detach().tolist(), "bias": head.bias.detach().tolist(),
            "pooling": "global average of `features`, then weight @ pooled + bias = logit"}


def metadata(ckpt: checkpoint.Checkpoint, model: nn.Module, extra: dict) -> dict[str, str]:
    """ONNX metadata_props: the whole checkpoint contract as JSON, plus its main keys."""
    contract = ckpt.to_json()
    props = {META_KEY: json.dumps(contract, default=str),
             "labels": json.dumps(ckpt.labels), "threshold": repr(ckpt.threshold),
             "preprocessing": json.dumps(ckpt.preprocessing.to_dict()),
             "pneumoscan.input": "uint8 gray (B, 1, S, S); normalisation is inside the graph",
             "pneumoscan.output": output_contract(ckpt),
             "pneumoscan.export": json.dumps(extra)}
    cam = cam_weights(model)
    if cam is not None:
        props["pneumoscan.cam_weights"] = json.dumps(cam)
    return props


def _export_graph(model: nn.Module, ckpt: checkpoint.Checkpoint, out: Path) -> None:
    size = ckpt.preprocessing.input_size
    wrapper = _WithFeatures(model, get_spec(ckpt.model_name).target_layer(model),
                            ckpt.preprocessing).eval()
    dummy = torch.zeros(2, 1, size, size, dtype=torch.uint8)
    torch.onnx.export(wrapper, (dummy,), str(out), input_names=[INPUT],
                      output_names=[LOGIT, FEATURES], opset_version=17, dynamo=False,
                      dynamic_axes={INPUT: {0: "batch"}, LOGIT: {0: "batch"},
                                    FEATURES: {0: "batch"}})


def _set_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


@torch.inference_mode()
def parity(path: Path, model: nn.Module, ckpt: checkpoint.Checkpoint,
           images: np.ndarray) -> dict:
    """ONNX vs torch: max |pneumonia probability difference|, label flips at the stored
    threshold, and max |difference| of each class's probability (every label)."""
    z_ref, z_onnx = predict_logits(model, ckpt, images), onnx_logits(path, images)
    p_ref = probabilities_from_logits(z_ref, ckpt)
    p_onnx = probabilities_from_logits(z_onnx, ckpt)
    flips = int(((p_ref >= ckpt.threshold) != (p_onnx >= ckpt.threshold)).sum())
    per_class = np.abs(class_probabilities(z_ref, ckpt) - class_probabilities(z_onnx, ckpt))
    return {"n": int(len(images)), "max_abs_prob_diff": float(np.abs(p_ref - p_onnx).max()),
            "label_flips": flips,
            "max_abs_class_prob_diff": dict(zip(ckpt.labels, map(float, per_class.max(axis=0))))}


class _Calibration:
    """onnxruntime CalibrationDataReader over uint8 images (duck-typed: get_next/rewind)."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self.batches = [images[i:i + batch_size, None] for i in range(0, len(images), batch_size)]
        self.i = 0
        self.bar = progress.bar(len(images), "INT8 calibration")

    def get_next(self):
        if self.i >= len(self.batches):
            self.bar.close()
            return None
        self.i += 1
        self.bar.update(len(self.batches[self.i - 1]))
        return {INPUT: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def shape_arithmetic(path: Path) -> list[str]:
    """Names of the nodes that compute Pad sizes from the input's shape: timm's TF-'same'
    convolutions trace their padding into the graph as Shape -> Div/Sub/Mul/Ceil... -> Pad.
    Quantized, that arithmetic yields wrong pad sizes (shifted feature maps): it must stay
    float. Traced back from every Pad's size inputs, stopping at Shape nodes."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    producer = {o: n for n in nodes for o in n.output}
    found, stack = {}, [t for n in nodes if n.op_type == "Pad" for t in n.input[1:]]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = node
        if node.op_type != "Shape":
            stack.extend(node.input)
    return list(found)


def quantize_int8(fp32_path: Path, out: Path, calibration: np.ndarray) -> None:
    """Static INT8 (QDQ, per-channel weights, MinMax) calibrated on `calibration` uint8
    images, with the padding arithmetic left in float (see shape_arithmetic)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    try:
        quantize_static(str(pre), str(out), _Calibration(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=shape_arithmetic(pre))
    finally:
        pre.unlink(missing_ok=True)


def export_model(model: nn.Module, ckpt: checkpoint.Checkpoint, out: str | Path,
                 parity_images: np.ndarray) -> dict:
    """Write the fp32 graph of a loaded model to `out`, parity-checked on `parity_images`
    (ExportError and no file if it differs from PyTorch by more than PARITY_TOLERANCE), with
    the checkpoint contract as metadata. Returns {"fp32": {"path", parity figures}}."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _export_graph(model, ckpt, out)
    check = parity(out, model, ckpt, parity_images)
    worst = max(check["max_abs_prob_diff"], *check["max_abs_class_prob_diff"].values())
    if not worst <= PARITY_TOLERANCE:
        out.unlink(missing_ok=True)
        raise ExportError(f"{out}: ONNX differs from PyTorch by {worst:.2e} in probability "
                          f"(tolerance {PARITY_TOLERANCE}, every class checked); file removed")
    _set_metadata(out, metadata(ckpt, model, {"dtype": "float32", "parity": check}))
    return {"fp32": {"path": str(out), **check}}


def export_onnx(model_path: str | Path | None, out: str | Path, parity_images: np.ndarray,
                calibration: np.ndarray | None = None) -> dict:
    """Export a checkpoint to ONNX (and INT8 if `calibration` images are given).

    Args:
        model_path: run folder or model.json; None for the shipped model.
        out: the .onnx file to write; INT8 goes beside it as <stem>.int8.onnx.
        parity_images: (N, S, S) uint8 real images; fp32 must match PyTorch within
            PARITY_TOLERANCE on every one or ExportError is raised (and the file removed).
        calibration: (M, S, S) uint8 validation images for static INT8 quantization.

    Returns a report: paths, parity figures of fp32 (and INT8) on `parity_images`.

    Examples:
        >>> export_onnx(None, "model.onnx", images)["fp32"]["max_abs_prob_diff"] < 1e-3
        True
    """
    _refuse_ensemble(model_path)
    model, ckpt = checkpoint.load(model_path)
    progress.step(f"exporting {out} and checking it against PyTorch on {len(parity_images)} "
                  f"val images")
    report = export_model(model, ckpt, out, parity_images)
    out = Path(out)
    if calibration is not None:
        int8 = out.with_name(out.stem + ".int8.onnx")
        progress.step(f"quantizing {out.name} to INT8 on {len(calibration)} val images")
        quantize_int8(out, int8, calibration)
        progress.step(f"checking {int8.name} against PyTorch")
        check8 = parity(int8, model, ckpt, parity_images)
        extra = {"dtype": "int8 static QDQ, padding arithmetic in float",
                 "n_calibration": int(len(calibration)), "parity": check8}
        _set_metadata(int8, metadata(ckpt, model, extra))
        report["int8"] = {"path": str(int8), "n_calibration": int(len(calibration)), **check8}
    return report


def val_images(model_path: str | Path | None, data_dir: str | Path, n: int) -> np.ndarray:
    """Up to n decoded images of the carved `val` split the checkpoint was selected on."""
    _, ckpt = checkpoint.load(model_path)
    records = split_of_run(ckpt.config, data_dir, "val")
    # Spread over the split (it is ordered by label) so both classes are present.
    step = max(1, len(records) // n)
    prep = ckpt.preprocessing
    images, _, _ = load_many([r.path for r in records[::step][:n]], prep.input_size,
                             prep.interpolation, storage_quality=prep.storage_quality)
    return images


def export_from_data(model_path: str | Path | None, out: str | Path, data_dir: str | Path,
                     int8: bool = False) -> dict:
    """export_onnx with parity (and INT8 calibration) images from the carved val split."""
    _refuse_ensemble(model_path)
    parity_images = val_images(model_path, data_dir, N_PARITY)
    calibration = val_images(model_path, data_dir, N_CALIBRATION) if int8 else None
    return export_onnx(model_path, out, parity_images, calibration)

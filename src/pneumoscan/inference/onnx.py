"""The ONNX Runtime backend: one exported graph, with no PyTorch.

An exported graph (export.py) takes the uint8 gray batch (B, 1, S, S) that data/decode.py
produces and normalises inside, so a caller cannot drift from the checkpoint's preprocessing.
Its outputs are `logit` ((B, 1) binary, (B, K) K-class) and `features` (B, C, h, w), the
Grad-CAM target layer, whose global average is what the OOD gate scores and which, with the
classifier weights stored in the metadata (`pneumoscan.cam_weights`), gives a class
activation map without PyTorch (explain/cam.py). The metadata also holds the checkpoint
contract it was exported from (`pneumoscan.checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core import contract
from ..core.contract import Checkpoint
from ..core.decisions import head_output
from ..core.errors import CheckpointError, ExportError

INPUT, LOGIT, FEATURES = "image", "logit", "features"
META_KEY = "pneumoscan.checkpoint"
CAM_KEY = "pneumoscan.cam_weights"


def output_contract(ckpt: Checkpoint) -> str:
    """What the `logit` output holds and how predict.class_probabilities reads it."""
    t = ckpt.temperature
    if ckpt.binary:
        return (f"logit (B, 1): the {ckpt.labels[1]} logit; p = sigmoid(logit / T), T = {t!r}; "
                f"{ckpt.labels[1]} when p >= threshold")
    return (f"logit (B, {len(ckpt.labels)}): class logits in the order of labels "
            f"{json.dumps(ckpt.labels)}; p = softmax(logit / T), T = {t!r}; pneumonia "
            f"probability 1 - p[NORMAL], PNEUMONIA when it is >= threshold")


def refuse_ensemble(model_path) -> None:
    if contract.is_ensemble(model_path):
        raise ExportError(
            f"{model_path}: an ensemble is not exported as one ONNX graph: the ONNX contract "
            f"is one model's `logit` (read with that model's temperature) and its Grad-CAM "
            f"`features`, and an average of calibrated member probabilities is neither. "
            f"Export each member ('pneumoscan export --model MEMBER') and average their "
            f"probabilities")


def open_session(path: str | Path, threads: int | None = None, low_memory: bool = False):
    """An ONNX Runtime CPU session of the graph at `path`. `low_memory`: no memory arena, so
    activations are returned to the system after each run (a server's peak memory: 262 vs
    361 MiB under 16 clients) at ~30% more CPU per batch (page faults; `predict` keeps it)."""
    import onnxruntime as ort  # ~60 MiB: only once a graph is to be run

    # Patient data must not leave the machine, not even usage events (ONNX Runtime sends
    # them only on Windows, through ETW; off everywhere for a clear record).
    ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = not low_memory
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path | None, session=None) -> dict:
    """The checkpoint contract (model.json content) stored in an exported ONNX file."""
    sess = session or open_session(path)
    return json.loads(sess.get_modelmeta().custom_metadata_map[META_KEY])


def onnx_outputs(session, images: np.ndarray, batch_size: int = 32,
                 features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, S, S) uint8 -> logits shaped as head_output gives them ((N,) binary, (N, K)
    K-class; float32) and, if asked, the (N, C) global average of the `features` output
    (the penultimate features the OOD gate scores), else None."""
    names = [LOGIT, FEATURES] if features else [LOGIT]
    logits, pooled = [], []
    for i in range(0, len(images), batch_size):
        out = session.run(names, {INPUT: images[i:i + batch_size, None]})
        logits.append(head_output(out[0]))
        if features:
            pooled.append(out[1].mean(axis=(2, 3), dtype=np.float32))
    if not logits:
        return np.zeros(0, np.float32), (np.zeros((0, 0), np.float32) if features else None)
    return (np.concatenate(logits).astype(np.float32),
            np.concatenate(pooled) if features else None)


def onnx_logits(path: str | Path, images: np.ndarray, batch_size: int = 32,
                session=None) -> np.ndarray:
    """(N, S, S) uint8 -> (N,) binary or (N, K) class logits from an exported graph."""
    return onnx_outputs(session or open_session(path), images, batch_size)[0]


class OnnxBackend:
    """One forward of an exported graph: logits, and the pooled features on request.

    Examples:
        >>> backend, ckpt = OnnxBackend.from_file("model.onnx")
        >>> backend.forward(images)[0].shape  # doctest: +SKIP
        (8,)
    """

    name = "onnxruntime"
    model = None  # no torch model: Grad-CAM comes from `features` (explain/cam.py)

    def __init__(self, session, path: str | Path | None = None):
        self.session, self.path = session, path and str(path)
        props = session.get_modelmeta().custom_metadata_map
        self.cam = json.loads(props[CAM_KEY]) if CAM_KEY in props else None

    @classmethod
    def from_file(cls, path: str | Path, threads: int | None = None
                  ) -> tuple[OnnxBackend, Checkpoint]:
        """The graph at `path` and the contract in its own metadata (for a graph used on its
        own, without the run folder it came from)."""
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: no such ONNX file (make one with 'pneumoscan "
                                  f"export')")
        try:
            session = open_session(path, threads)
            ckpt = Checkpoint.from_json(read_metadata(path, session))
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: not a pneumoscan ONNX export ({e})") from None
        except Exception as e:  # onnxruntime raises its own types for a corrupt file
            raise CheckpointError(f"{path}: cannot load ONNX model ({e})") from None
        if LOGIT not in [o.name for o in session.get_outputs()]:
            raise CheckpointError(f"{path}: ONNX model has no '{LOGIT}' output")
        ckpt.extra["path"] = str(path)
        return cls(session, path), ckpt

    def forward(self, images: np.ndarray, batch_size: int = 32, features: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, S, S) uint8 -> (N,) or (N, K) float32 logits and, if asked, (N, C) pooled
        features (else None), from one run of the graph."""
        return onnx_outputs(self.session, images, batch_size, features)

    def feature_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> (N,) or (N, K) logits and the (N, C, h, w) `features` output."""
        logit, maps = self.session.run([LOGIT, FEATURES], {INPUT: images[:, None]})
        return head_output(logit).astype(np.float32), maps

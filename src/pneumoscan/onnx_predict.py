"""Predictor on ONNX Runtime: same interface and outputs as the torch Predictor.

The exported file carries the checkpoint contract (labels, threshold, preprocessing) in its
metadata and normalises inside the graph, so it is all a deployment needs. `pneumoscan
predict` uses it by default through runtime.py, with the contract (temperature, threshold, OOD
gate) read from the checkpoint itself and the torch model kept beside it for Grad-CAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import ood
from .checkpoint import Checkpoint, CheckpointError
from .export import LOGIT, onnx_outputs, read_metadata
from .predict import Predictor


class OnnxPredictor(Predictor):
    """Examples:
        >>> p = OnnxPredictor.from_onnx("model.onnx")
        >>> p.predict(["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])[0].label
        'NORMAL'
    """

    def __init__(self, session, ckpt: Checkpoint, model=None):
        # `model`: the torch model of the same checkpoint, if loaded (Grad-CAM uses it).
        self.session, self.ckpt, self.model = session, ckpt, model

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None) -> OnnxPredictor:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise CheckpointError(f"{path}: no such ONNX file (make one with 'pneumoscan export')")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            ckpt = Checkpoint.from_json(read_metadata(path, session))
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: not a pneumoscan ONNX export ({e})") from None
        except Exception as e:  # onnxruntime raises its own types for a corrupt file
            raise CheckpointError(f"{path}: cannot load ONNX model ({e})") from None
        if LOGIT not in [o.name for o in session.get_outputs()]:
            raise CheckpointError(f"{path}: ONNX model has no '{LOGIT}' output")
        ckpt.extra["path"] = str(path)
        return cls(session, ckpt)

    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return onnx_outputs(self.session, images, batch_size)[0]

    def logits_and_ood(self, images: np.ndarray,
                       batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Logits and OOD scores from one run of the graph (its `features` output is the
        layer the gate was fitted on); NaN scores without a gate."""
        gated = self.ckpt.ood_stats is not None
        logits, pooled = onnx_outputs(self.session, images, batch_size, features=gated)
        if not gated:
            return logits, np.full(len(logits), np.nan)
        return logits, ood.scores(pooled, self.ckpt.ood_stats)

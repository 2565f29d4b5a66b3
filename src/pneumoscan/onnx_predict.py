"""Predictor on ONNX Runtime: same interface and outputs as the torch Predictor.

The exported file carries the checkpoint contract (labels, threshold, preprocessing) in its
metadata and normalises inside the graph, so it is all a deployment needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, CheckpointError
from .export import LOGIT, onnx_logits, read_metadata
from .predict import Predictor


class OnnxPredictor(Predictor):
    """Examples:
        >>> p = OnnxPredictor.from_onnx("model.onnx")
        >>> p.predict(["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])[0].label
        'NORMAL'
    """

    def __init__(self, session, ckpt: Checkpoint):
        self.session, self.ckpt, self.model = session, ckpt, None

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
        return onnx_logits(None, images, batch_size, session=self.session)

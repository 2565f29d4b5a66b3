"""The decision rules: logits -> calibrated probabilities -> label, etiology and OOD flag.

Pure numpy, shared by every runtime (ONNX Runtime, torch) and by training, which chooses the
stored threshold with the same arithmetic: a threshold is one val image's float32 score, so
the rule that reproduces it must be the rule that made it.
"""

from __future__ import annotations

import numpy as np

from .contract import Checkpoint
from .labels import LABELS


def head_output(raw: np.ndarray):
    """The model's (N, 1) or (N, K) output -> (N,) logits of a binary model, or (N, K)
    logits of a K-class model (labels in checkpoint order). Works on numpy arrays and torch
    tensors alike."""
    return raw[:, 0] if raw.shape[1] == 1 else raw


def scaled_sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) logits -> (N,) float64 probabilities sigmoid(logit / T), computed in float32 as
    every stored threshold was."""
    z = np.ascontiguousarray(logits, dtype=np.float32) / np.float32(temperature)
    with np.errstate(over="ignore"):  # exp(-z) -> inf for z << 0: the probability is 0
        p = np.float32(1.0) / (np.float32(1.0) + np.exp(-z))
    return p.astype(np.float64)


def scaled_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, K) logits -> (N, K) float64 probabilities softmax(logits / T), in float32."""
    z = np.ascontiguousarray(logits, dtype=np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float64)


def class_probabilities(logits: np.ndarray, ckpt: Checkpoint) -> np.ndarray:
    """(N,) binary or (N, K) class logits -> (N, K) probabilities (float64) in the order of
    ckpt.labels: [1 - p, p] for a binary model, softmax(logits / T) for a K-class one. What
    ensembles and test-time augmentation average."""
    if logits.ndim == 1:
        p = scaled_sigmoid(logits, ckpt.temperature)
        return np.stack([1.0 - p, p], axis=1)
    return scaled_softmax(logits, ckpt.temperature)


def probabilities_from_logits(logits: np.ndarray, ckpt: Checkpoint) -> np.ndarray:
    """(N,) or (N, K) logits -> (N,) pneumonia probabilities (float64); the one place every
    runtime (torch, ONNX) turns logits into the probability compared with the stored
    threshold: sigmoid(logit / T) for a binary model, 1 - P(NORMAL) for a K-class one.
    The temperature was fitted on val (calibrate); the stored threshold is in its scale."""
    if logits.ndim == 1:
        return scaled_sigmoid(logits, ckpt.temperature)
    return 1.0 - class_probabilities(logits, ckpt)[:, ckpt.labels.index("NORMAL")]


def label_of(probability: float, ckpt: Checkpoint) -> str:
    """NORMAL / PNEUMONIA at the stored threshold (a K-class model's pneumonia probability is
    1 - P(NORMAL))."""
    names = ckpt.labels if ckpt.binary else LABELS
    return names[int(probability >= ckpt.threshold)]


def etiology_of(class_probs: np.ndarray, ckpt: Checkpoint) -> str | None:
    """The likelier non-NORMAL class of one image's (K,) probabilities; None if binary."""
    if ckpt.binary:
        return None
    others = [i for i, name in enumerate(ckpt.labels) if name != "NORMAL"]
    return ckpt.labels[max(others, key=lambda i: class_probs[i])]


OOD_WARNING = ("out of distribution: this image does not look like the chest X-rays the model "
               "was trained on; the probability is unreliable and no label is given")


def decide(probability: float, class_probs: np.ndarray, ood_score: float, ckpt: Checkpoint,
           label_ood: bool = False) -> tuple[str | None, str | None, bool | None, list[str]]:
    """One scored image -> (label, etiology, OOD flag, warnings), the rules every interface
    shows (CLI, REST, the page, explain, DICOM):

    - label: NORMAL / PNEUMONIA at the stored threshold, but None for an image the OOD gate
      flags (its probability stays available; `label_ood` gives the label anyway);
    - etiology: the likelier non-NORMAL class of a K-class model, only when the label is
      PNEUMONIA (None for NORMAL, for a flagged image and for a binary model);
    - OOD flag: None without a gate or without a score (NaN).
    """
    flagged = None if np.isnan(ood_score) else ood_flag(ood_score, ckpt)
    label = None if flagged and not label_ood else label_of(probability, ckpt)
    etiology = etiology_of(class_probs, ckpt) if label == "PNEUMONIA" else None
    return label, etiology, flagged, [OOD_WARNING] if flagged else []


def ood_flag(score: float, ckpt: Checkpoint) -> bool | None:
    """True when an OOD score is above the gate's threshold; None without a gate."""
    gate = ckpt.ood_gate
    return None if gate is None else bool(score > gate["threshold"])

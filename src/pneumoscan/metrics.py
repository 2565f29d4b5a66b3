"""Pure numpy metric functions on probabilities and binary targets."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Area under the ROC curve. y_true (N,) in {0,1}, y_prob (N,); NaN if one class only."""
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, y_prob))


def threshold_for_sensitivity(y_true: np.ndarray, y_prob: np.ndarray, target: float) -> float:
    """Highest threshold t such that sensitivity (prob >= t counts positive) is >= target."""
    fpr, tpr, thr = roc_curve(y_true, y_prob, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= target)
    return float(min(thr[ok[0]], 1.0))


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict:
    """Confusion counts and rates at `threshold` (positive when prob >= threshold).

    Args:
        y_true: (N,) int array, 1 = pneumonia.
        y_prob: (N,) float array of pneumonia probabilities.
    """
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(y_prob) >= threshold).astype(int)
    tp = int(((pred == 1) & (y_true == 1)).sum())
    fp = int(((pred == 1) & (y_true == 0)).sum())
    tn = int(((pred == 0) & (y_true == 0)).sum())
    fn = int(((pred == 0) & (y_true == 1)).sum())

    def ratio(a, b):
        return a / b if b else float("nan")

    precision, sensitivity = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "n": int(len(y_true)),
        "auroc": auroc(y_true, y_prob),
        "accuracy": ratio(tp + tn, len(y_true)),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * precision * sensitivity, precision + sensitivity),
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }

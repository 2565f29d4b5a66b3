"""Warnings for settings fitted on too little data. A quick run (limit_per_class, a small
folder) carves a tiny val split, and the threshold, temperature and OOD cut-off chosen on it
mean nothing; say so instead of storing them silently. Pure functions: each returns the
warning or None."""

from __future__ import annotations

import math

import numpy as np

from .metrics import TEMPERATURE_BOUNDS

MIN_VAL_IMAGES = 50    # below this, a threshold at 0.98 sensitivity rests on a handful of images
MIN_VAL_PER_CLASS = 10
OOD_SANE_FACTOR = 10   # an X-ray's distance is about sqrt(feature dim); ten times that is absurd


def val_size(y_val: np.ndarray, labels: list[str]) -> str | None:
    """y_val (N,) class indices in `labels` order (binary: 0 NORMAL, 1 PNEUMONIA)."""
    counts = np.bincount(np.asarray(y_val, dtype=int), minlength=len(labels))
    if len(y_val) >= MIN_VAL_IMAGES and counts.min() >= MIN_VAL_PER_CLASS:
        return None
    per_class = ", ".join(f"{n} {name}" for name, n in zip(labels, counts))
    return (f"val holds {len(y_val)} images ({per_class}): the threshold, temperature and OOD "
            f"cut-off chosen on it are meaningless (want >= {MIN_VAL_IMAGES} images and >= "
            f"{MIN_VAL_PER_CLASS} per class); limit_per_class and val_fraction shrink val")


def temperature(t: float) -> str | None:
    low, high = TEMPERATURE_BOUNDS
    if low * 1.001 < t < high / 1.001:
        return None
    return (f"the temperature hit the end of its search range (T = {t:.4g}, range {low}-{high}):"
            f" val cannot estimate it (too few images, or all separated), so the calibrated "
            f"probabilities are meaningless")


def ood_cutoff(meta: dict, feature_dim: int) -> str | None:
    """meta: the OOD gate's model.json entry (training/ood.fit_gate)."""
    sane = OOD_SANE_FACTOR * math.sqrt(feature_dim)
    tail = meta["n_val"] * meta["target_false_reject"]
    if meta["threshold"] <= sane and tail >= 1:
        return None
    why = (f"it is {meta['threshold']:.4g}, where an X-ray lies at about "
           f"{math.sqrt(feature_dim):.0f}" if meta["threshold"] > sane
           else f"{meta['n_val']} val images cannot place a {meta['target_false_reject']:.1%} "
                f"tail, so it is simply the largest val score")
    return (f"the OOD cut-off is meaningless ({why}; fitted on {meta['n_train']} train "
            f"images): the out-of-distribution flag of this model cannot be trusted")

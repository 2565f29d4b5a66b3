"""Fitting the out-of-distribution gate (torch): is this input like the chest X-rays the model
was trained on? The score itself is inference/ood.py.

The score is a Mahalanobis distance of the model's penultimate features (the global average
of the registry's target layer, the 1280-d pre-logits of EfficientNet-Lite) to the train
split's features. To keep the stored statistics small it is a probabilistic-PCA form: a
full (Ledoit-Wolf shrunk) covariance in the top-k principal components plus one isotropic
variance for everything outside them, so an input that moves features off the train
subspace still scores high. Fitted on the carved train split, threshold on the carved val
split at a target false-reject rate; test is never read.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from torch import nn

from ..core import progress
from ..data import load_records
from ..data.batches import load_many_shown
from ..data.runs import split_of_run
from ..evaluation import meaningful
from ..inference.ood import scores
from ..inference.torch_backend import logits_and_features, pooled_features  # noqa: F401
from ..models import weights as checkpoint

COMPONENTS = 256            # principal components kept with their full covariance
TARGET_FALSE_REJECT = 0.005  # share of val X-rays allowed above the threshold


def fit_stats(train_features: np.ndarray, components: int = COMPONENTS) -> dict[str, np.ndarray]:
    """Mean, top-k principal axes (float16), their shrunk precision and the residual variance
    (float32)."""
    from sklearn.covariance import LedoitWolf

    f = train_features.astype(np.float64)
    mean = f.mean(axis=0)
    centred = f - mean
    k = max(1, min(components, len(f) - 1, f.shape[1] - 1))
    axes = np.linalg.svd(centred, full_matrices=False)[2][:k]  # (k, D), orthonormal rows
    z = centred @ axes.T
    precision = LedoitWolf().fit(z).precision_
    residual = (centred ** 2).sum(axis=1) - (z ** 2).sum(axis=1)
    residual_var = max(float(residual.mean()) / (f.shape[1] - k), 1e-12)
    # The axes are the bulk of the file: float16 halves it (0.66 MB for 256 x 1280) and moves
    # a score by far less than the gap between X-rays and foreign images.
    return {"mean": mean.astype(np.float32), "axes": axes.astype(np.float16),
            "precision": precision.astype(np.float32),
            "residual_var": np.array([residual_var], np.float32)}


def fit_gate(model: nn.Module, ckpt: checkpoint.Checkpoint, train_images: np.ndarray,
             val_images: np.ndarray, target_false_reject: float = TARGET_FALSE_REJECT,
             components: int = COMPONENTS) -> tuple[dict, dict]:
    """Statistics from train features, threshold from val scores: (tensors, model.json entry)."""
    def features(images, split):
        return progress.batched(lambda x: logits_and_features(model, ckpt, x), images,
                                f"OOD features of {split}")[1]

    stats = fit_stats(features(train_images, "train"), components)
    val_scores = scores(features(val_images, "val"), stats)
    threshold = float(np.quantile(val_scores, 1.0 - target_false_reject, method="higher"))
    meta = {"method": "mahalanobis-ppca", "features": "global average of the target layer",
            "components": int(stats["axes"].shape[0]), "threshold": threshold,
            "target_false_reject": target_false_reject,
            "val_false_reject": float(np.mean(val_scores > threshold)),
            "fitted_on": "train", "threshold_on": "val", "n_train": int(len(train_images)),
            "n_val": int(len(val_images)),
            "created": datetime.now().isoformat(timespec="seconds")}
    return stats, meta


def fit_for_run(model_path: str | Path | None, data_dir: str | Path,
                target_false_reject: float = TARGET_FALSE_REJECT) -> dict:
    """Fit the gate of an existing run on its own carved train/val split (read from the data
    folder with the run's val_fraction and seed) and store it beside the weights."""
    model, ckpt = checkpoint.load(model_path)
    records = load_records(data_dir)
    prep = ckpt.preprocessing
    arrays = {}
    for split in ("train", "val"):
        recs = split_of_run(ckpt.config, records, split)
        arrays[split] = load_many_shown([r.path for r in recs], prep.input_size,
                                        prep.interpolation, prep.storage_quality,
                                        f"decoding {split}")[0]
    stats, meta = fit_gate(model, ckpt, arrays["train"], arrays["val"], target_false_reject)
    checkpoint.save_ood(ckpt.extra["path"], stats, meta)
    return {**meta, "warning": meaningful.ood_cutoff(meta, len(stats["mean"]))}

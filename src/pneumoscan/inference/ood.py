"""The out-of-distribution gate's score (numpy): how far an image's penultimate features lie
from the train split's, under the statistics fitted by training/ood (`pneumoscan fit-ood`).

A Mahalanobis distance in probabilistic-PCA form: a full (Ledoit-Wolf shrunk) covariance in
the top-k principal components plus one isotropic variance for everything outside them, so
an input that moves features off the train subspace still scores high.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits


def scores(features: np.ndarray, stats: dict) -> np.ndarray:
    """(N, D) features -> (N,) Mahalanobis distances (float64) under the stored statistics."""
    if len(features) == 0:  # a batch in which no file could be decoded
        return np.zeros(0)
    get = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    centred = features.astype(np.float64) - get["mean"]
    # One BLAS thread: these products take ~0.1 ms per image, but OpenBLAS's own threads
    # keep spinning after them and stole ~25% of the next batch's ONNX Runtime / torch
    # forward pass (benchmarks/predict_overheads.py).
    with threadpool_limits(1, user_api="blas"):
        z = centred @ get["axes"].T
        inside = np.einsum("ni,ij,nj->n", z, get["precision"], z)
    residual = np.maximum((centred ** 2).sum(axis=1) - (z ** 2).sum(axis=1), 0.0)
    return np.sqrt(inside + residual / get["residual_var"][0])



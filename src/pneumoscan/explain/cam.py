"""Class activation maps in numpy: Grad-CAM from a feature map and the linear head, no PyTorch.

For a model whose head is global-average-pool + linear on the target layer (EfficientNet-Lite:
bn2 output -> pool -> classifier) the gradient of a logit at every feature-map position is
its classifier row / (h * w), so Grad-CAM is relu(row . features), normalised. An exported
graph (inference/onnx.py) carries the `features` output and the classifier in its metadata.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..core.contract import Checkpoint
from ._turbo import TURBO

_TURBO = np.asarray(TURBO, dtype=np.float64)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each (h, w) map of a (N, h, w) stack to [0, 1] by its maximum (negatives -> 0);
    an all-zero map stays zero."""
    maps = np.clip(np.nan_to_num(maps.astype(np.float32)), 0, None)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def resize_map(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of one (h, w) map to (height, width), kept in [0, 1] (numpy + PIL only,
    so the ONNX path gives the same pixels as the torch path)."""
    img = Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32), mode="F")
    out = np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def cam_from_features(features: np.ndarray, weights: np.ndarray, width: int | None = None,
                      height: int | None = None) -> np.ndarray:
    """Class activation map from a feature map and the linear head's weights.

    Args:
        features: (C, h, w) the target layer's output for one image.
        weights: (C,) the classifier row of the target logit (`classifier.weight[target]`);
            for a K-class model's pneumonia log-odds, the gradient of the log-odds w.r.t.
            the logits times the classifier weight (a per-image row: cam_rows).
        width, height: the original image size to resize to; None keeps (h, w).

    Returns:
        (h, w) or (height, width) float32 map in [0, 1].

    Examples:
        >>> cam_from_features(np.ones((2, 7, 7)), np.array([1.0, -0.5])).max()
        1.0
    """
    cam = normalise(np.tensordot(weights, features, axes=1)[None])[0]
    return cam if width is None else resize_map(cam, width, height)


def cam_rows(logits: np.ndarray, weight: np.ndarray, ckpt: Checkpoint,
             target: int | None = None) -> np.ndarray:
    """(N, C) classifier rows whose dot product with the pooled features is the explained
    score (up to a constant): `target`'s logit, or with None the pneumonia decision (a binary
    model's logit; a K-class model's pneumonia log-odds logsumexp(z_sick / T) - z_NORMAL / T,
    whose gradient w.r.t. the logits z is softmax over the sick classes / T and -1 / T).

    Args:
        logits: (N,) binary or (N, K) class logits of the same images.
        weight: (K, C) classifier weight (K = 1 for a binary model).
    """
    n = len(logits)
    if target is not None or ckpt.binary:
        return np.repeat(weight[0 if target is None else target][None], n, axis=0)
    t = ckpt.temperature
    normal = ckpt.labels.index("NORMAL")
    z = np.asarray(logits, dtype=np.float64) / t
    sick = np.delete(np.arange(z.shape[1]), normal)
    e = np.exp(z[:, sick] - z[:, sick].max(axis=1, keepdims=True))
    grad = np.zeros_like(z)
    grad[:, sick] = e / e.sum(axis=1, keepdims=True) / t
    grad[:, normal] = -1.0 / t
    return grad @ weight


def onnx_gradcam(feature_maps: np.ndarray, logits: np.ndarray, cam: dict, ckpt: Checkpoint,
                 target: int | None = None) -> np.ndarray:
    """(N, C, h, w) `features` and the logits of one graph run -> (N, h, w) Grad-CAM maps in
    [0, 1], with `cam` the graph's classifier metadata (weight, bias)."""
    rows = cam_rows(logits, np.asarray(cam["weight"], dtype=np.float64), ckpt, target)
    maps = [np.tensordot(r, f.astype(np.float64), axes=1) for r, f in zip(rows, feature_maps)]
    if not maps:
        return np.zeros((0, *feature_maps.shape[2:]), np.float32)
    return normalise(np.stack(maps))


def heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 4) uint8 RGBA layer to lay over the X-ray, with the same
    colours (turbo) and value-dependent opacity (up to 0.55) as render.render: the web page's
    overlay. Colours are looked up as matplotlib's 256-entry colour map does."""
    h = np.clip(heatmap, 0.0, 1.0)
    index = np.minimum((h * 256).astype(np.int64), 255)
    rgba = np.empty((*h.shape, 4))
    rgba[..., :3] = _TURBO[index]
    rgba[..., 3] = 0.55 * heatmap
    return np.round(rgba * 255).astype(np.uint8)

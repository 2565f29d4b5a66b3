"""Test-time augmentation: average a model's calibrated class probabilities over a few small,
deterministic shifts and zooms of the decoded uint8 images.

The views are the kind of change training augmentation already showed the model (shifts,
zoom; same nearest-neighbour resampling and black fill), only smaller. No flips: a chest is
not left-right symmetric, and training keeps flips off by default. Whether the averaging
helps is measured, not assumed (README, docs/experiments.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.contract import Checkpoint
from ..core.decisions import class_probabilities, probabilities_from_logits
from .torch_backend import predict_logits

# (shift x, shift y) as fractions of the image side, then zoom; the first is the identity.
VIEWS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0),
    (0.04, 0.0, 1.0), (-0.04, 0.0, 1.0), (0.0, 0.04, 1.0), (0.0, -0.04, 1.0),
    (0.0, 0.0, 0.95), (0.0, 0.0, 1.05),
)
IDENTITY = (VIEWS[0],)


def view(images: np.ndarray, dx: float, dy: float, scale: float) -> np.ndarray:
    """(N, S, S) uint8 -> the same images shifted by (dx, dy) * S pixels and zoomed by
    `scale` about the centre, uint8; the identity returns `images` itself."""
    if (dx, dy, scale) == (0.0, 0.0, 1.0) or len(images) == 0:
        return images
    from torchvision.transforms.v2 import functional as F

    size = images.shape[-1]
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    out = F.affine(x, angle=0.0, translate=[round(dx * size), round(dy * size)], scale=scale,
                   shear=[0.0, 0.0])  # nearest, fill 0: as v2.RandomAffine in training
    return out[:, 0].numpy()


def view_logits(model: nn.Module, ckpt: Checkpoint, images: np.ndarray,
                views=VIEWS, batch_size: int = 32) -> list[np.ndarray]:
    """One (N,) or (N, K) logit array per view."""
    return [predict_logits(model, ckpt, view(images, *v), batch_size) for v in views]


def probabilities(model: nn.Module, ckpt: Checkpoint, images: np.ndarray, views=VIEWS,
                  batch_size: int = 32, identity_logits: np.ndarray | None = None) -> np.ndarray:
    """(N, S, S) uint8 -> (N,) pneumonia probabilities averaged over `views`: the mean of
    1 - P(NORMAL), i.e. the mean of p for a binary model. `identity_logits`, when the caller
    already has them (the OOD pass), stand in for the first view, which must be the identity."""
    if identity_logits is not None:
        if views[0] != IDENTITY[0]:
            raise ValueError("identity_logits given but the first view is not the identity")
        logits = [identity_logits] + view_logits(model, ckpt, images, views[1:], batch_size)
    else:
        logits = view_logits(model, ckpt, images, views, batch_size)
    return np.mean([probabilities_from_logits(z, ckpt) for z in logits], axis=0)


def class_probabilities_tta(model: nn.Module, ckpt: Checkpoint, images: np.ndarray,
                            views=VIEWS, batch_size: int = 32) -> np.ndarray:
    """(N, S, S) uint8 -> (N, K) calibrated class probabilities (ckpt.labels order) averaged
    over `views`."""
    return np.mean([class_probabilities(z, ckpt)
                    for z in view_logits(model, ckpt, images, views, batch_size)], axis=0)

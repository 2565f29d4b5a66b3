"""Site adaptation: adjust a trained model to an unlabelled batch of images from a new site.

Never the default. Both methods read only the images of the batch (no labels), so they work
on any folder of new X-rays; the unadapted figures are always reported beside the adapted
ones (issue #9's rule for methods that look at unlabelled evaluation images).

- "bn": test-time BatchNorm statistics (AdaBN, Li et al. 2016): every BatchNorm layer's
  running mean and variance are re-estimated on the batch; weights stay as trained.
- "em": prior-shift correction (Saerens, Latinne & Decaestecker 2002): EM estimates the
  batch's pneumonia prevalence from the probabilities and re-weights them from the prior the
  model was calibrated under (the labelled val split's prevalence, read from the checkpoint's
  val_metrics) to the estimated one. A monotone map: AUROC is unchanged, the operating point
  at the stored threshold moves.
- "bn+em": both, EM on the BN-adapted probabilities.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import load_records
from ..evaluation.metrics import headline_metrics
from ..inference.torch_backend import predict_arrays
from ..models import weights as checkpoint
from ..models.transforms import to_model_input
from .evaluate import split_images

METHODS = ("bn", "em", "bn+em")
MIN_BN_IMAGES = 32  # fewer images give BatchNorm statistics noisier than the stored ones


@torch.no_grad()
def bn_adapted(model: nn.Module, ckpt: checkpoint.Checkpoint, images: np.ndarray,
               batch_size: int = 64) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are re-estimated on `images`
    ((N, S, S) uint8, N >= 32); `model` itself is left untouched.

    Each batch's statistics get equal weight (momentum None: a cumulative average), so the
    result depends on the batch order only through the last, smaller batch.

    Examples:
        >>> adapted = bn_adapted(model, ckpt, new_site_images)
        >>> p = predict_arrays(adapted, ckpt, new_site_images)
    """
    if len(images) < MIN_BN_IMAGES:
        raise ValueError(f"BatchNorm adaptation needs at least {MIN_BN_IMAGES} images, "
                         f"got {len(images)}")
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to adapt")
    for bn in norms:  # only BN in train mode: dropout and the rest stay in eval
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for i in range(0, len(images), batch_size):
        adapted(to_model_input(torch.from_numpy(images[i:i + batch_size]).unsqueeze(1),
                               ckpt.preprocessing))
    return adapted.eval()


def source_prior(ckpt: checkpoint.Checkpoint) -> float:
    """Pneumonia prevalence of the labelled split the probabilities were calibrated on (val),
    from the checkpoint's stored confusion counts."""
    vm = ckpt.val_metrics or {}
    try:
        n_pos, n = vm["tp"] + vm["fn"], vm["tp"] + vm["fn"] + vm["fp"] + vm["tn"]
    except KeyError:
        raise ValueError("the checkpoint's val_metrics lack confusion counts: no source "
                         "prior for EM") from None
    return n_pos / n


def em_prior_shift(probs: np.ndarray, prior: float, max_iter: int = 1000,
                   tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """Saerens et al. (2002) EM for a new class prior.

    Args:
        probs: (N,) pneumonia probabilities, calibrated under prevalence `prior`.
        prior: the source prevalence of pneumonia, in (0, 1).

    Returns:
        ((N,) probabilities re-weighted to the estimated prevalence, that prevalence).

    Examples:
        >>> p, pi = em_prior_shift(np.array([0.9, 0.2, 0.6]), prior=0.74)
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    if not 0 < prior < 1:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    if len(p) == 0:
        return p, prior
    pi = prior
    for _ in range(max_iter):
        adjusted = _reweight(p, prior, pi)
        new = float(adjusted.mean())
        if abs(new - pi) < tol:
            pi = new
            break
        pi = new
    return _reweight(p, prior, pi), pi


def _reweight(p: np.ndarray, prior: float, new: float) -> np.ndarray:
    pos = p * (new / prior)
    neg = (1 - p) * ((1 - new) / (1 - prior))
    return pos / (pos + neg)


def adapt_probabilities(model: nn.Module, ckpt: checkpoint.Checkpoint, images: np.ndarray,
                        method: str) -> tuple[np.ndarray, dict]:
    """(N, S, S) uint8 images of one site -> (N,) adapted probabilities and what was estimated
    ({"prior": ...} for EM)."""
    if method not in METHODS:
        raise ValueError(f"unknown adaptation '{method}': choose one of {', '.join(METHODS)}")
    info: dict = {"method": method}
    if method.startswith("bn"):
        probs = predict_arrays(bn_adapted(model, ckpt, images), ckpt, images)
    else:
        probs = predict_arrays(model, ckpt, images)
    if method.endswith("em"):
        info["source_prior"] = source_prior(ckpt)
        probs, info["prior"] = em_prior_shift(probs, info["source_prior"])
    return probs, info


def evaluate_adapted(model_path: str | Path | None, data_dir: str | Path, split: str,
                     method: str, allow_pickle: bool = False) -> dict:
    """The split's metrics at the stored threshold, unadapted and adapted to the split's own
    (unlabelled) images: {"unadapted": {...}, "adapted": {...}, "adaptation": {...}}.
    Labels are read only to score; the adaptation never sees them."""
    all_records = load_records(data_dir)
    model, ckpt = checkpoint.load(model_path, allow_pickle=allow_pickle)
    records, images, ok, errors = split_images(all_records, ckpt, split, data_dir)
    targets = [records[i].target for i in ok]
    plain = predict_arrays(model, ckpt, images)
    adapted, info = adapt_probabilities(model, ckpt, images, method)
    out = {"split": split, "model": ckpt.extra.get("path"), "skipped": list(errors.values()),
           "adaptation": info}
    out["unadapted"] = headline_metrics(targets, plain, ckpt.threshold)
    out["adapted"] = headline_metrics(targets, adapted, ckpt.threshold)
    return out

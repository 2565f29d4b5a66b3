"""Site adaptation figures (issue #9, part 3): the shipped model on test and val, unadapted
and adapted to each split's own unlabelled images, at the stored threshold.

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/adapt_check.py [--model RUN]

Images come from the benchmarks/gap_cache.py cache when it holds them (the same decode),
else they are decoded here. Also adapts BatchNorm on one random half of test and scores the
other half, so that no image's score depends on its own pixels through the statistics.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from gap_cache import load_cache

from pneumoscan.core.config import config_from_dict
from pneumoscan.core.decisions import probabilities_from_logits
from pneumoscan.data import scan, select
from pneumoscan.data.decode import load_many
from pneumoscan.evaluation.metrics import headline_metrics
from pneumoscan.inference.torch_backend import predict_arrays
from pneumoscan.models import weights as checkpoint
from pneumoscan.workflows import adapt


def row(name: str, y, p, thr: float, extra: str = "") -> None:
    m = headline_metrics(y, p, thr)
    print(f"  {name:16s} AUROC {m['auroc']:.4f}  sens {m['sensitivity']:.3f}  spec "
          f"{m['specificity']:.3f}  acc {m['accuracy']:.3f}  fp {m['fp']:3d}  fn {m['fn']:3d}"
          f"  {extra}", flush=True)


def split_images(split: str, cfg, cache: dict, shipped: bool):
    """(images, targets, unadapted logits from the cache or None) of a split."""
    recs = select(scan(os.environ["PNEUMOSCAN_DATA"]), split, cfg.val_fraction, cfg.seed)
    paths = [r.path for r in recs]
    y = np.array([r.target for r in recs])
    if "images" in cache:
        index = np.array([{p: i for i, p in enumerate(cache["path"])}[p] for p in paths])
        logits = cache["logit_shipped"][index] if shipped else None
        return cache["images"][index], y, logits
    images, ok, errors = load_many(paths, 224)
    assert not errors, errors
    return images, y, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--splits", nargs="*", default=["test", "val"])
    args = ap.parse_args()
    model, ckpt = checkpoint.load(args.model)
    cfg = config_from_dict(ckpt.config)
    cache = load_cache()
    prior = adapt.source_prior(ckpt)
    print(f"threshold {ckpt.threshold:.4f}, source prior (val prevalence) {prior:.4f}")
    for split in args.splits:
        images, y, logits = split_images(split, cfg, cache, args.model is None)
        print(f"{split}: {len(y)} images, prevalence {y.mean():.3f}", flush=True)
        # the cached logits of the shipped model: one forward pass fewer on a shared CPU
        p0 = (predict_arrays(model, ckpt, images) if logits is None
              else probabilities_from_logits(logits, ckpt))
        row("unadapted", y, p0, ckpt.threshold)
        pe, pi = adapt.em_prior_shift(p0, prior)
        row("em", y, pe, ckpt.threshold, f"estimated prevalence {pi:.3f}")
        pb = predict_arrays(adapt.bn_adapted(model, ckpt, images), ckpt, images)
        row("bn", y, pb, ckpt.threshold)
        pbe, pi = adapt.em_prior_shift(pb, prior)
        row("bn+em", y, pbe, ckpt.threshold, f"estimated prevalence {pi:.3f}")
    for split in args.splits[:1]:
        images, y, _ = split_images(split, cfg, cache, False)
        if split == "test":  # adapt on one half, score the other
            half = np.random.default_rng(0).permutation(len(y)) < len(y) // 2
            pb2 = np.empty(len(y))
            for a in (half, ~half):
                pb2[~a] = predict_arrays(adapt.bn_adapted(model, ckpt, images[a]), ckpt,
                                         images[~a])
            row("bn (other half)", y, pb2, ckpt.threshold)


if __name__ == "__main__":
    main()

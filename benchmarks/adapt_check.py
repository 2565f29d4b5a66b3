"""Site adaptation figures (issue #9, part 3): the shipped model on val and test, unadapted
and adapted to each split's own unlabelled images, at the stored threshold.

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/adapt_check.py [--model RUN]

Also adapts on random halves of test and scores the other half, so that no image's score
depends on its own pixels through the BatchNorm statistics or the EM prior.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from pneumoscan import adapt, checkpoint
from pneumoscan.config import config_from_dict
from pneumoscan.data import scan, select
from pneumoscan.metrics import headline_metrics
from pneumoscan.predict import predict_arrays
from pneumoscan.transforms import load_many


def row(name: str, y, p, thr: float, extra: str = "") -> None:
    m = headline_metrics(y, p, thr)
    print(f"  {name:18s} AUROC {m['auroc']:.4f}  sens {m['sensitivity']:.3f}  spec "
          f"{m['specificity']:.3f}  acc {m['accuracy']:.3f}  fp {m['fp']:3d}  fn {m['fn']:3d}"
          f"  {extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    model, ckpt = checkpoint.load(args.model)
    cfg = config_from_dict(ckpt.config)
    recs = scan(os.environ["PNEUMOSCAN_DATA"])
    prior = adapt.source_prior(ckpt)
    print(f"threshold {ckpt.threshold:.4f}, source prior (val prevalence) {prior:.4f}")
    for split in ("val", "test"):
        rs = select(recs, split, cfg.val_fraction, cfg.seed)
        images, ok, _ = load_many([r.path for r in rs], 224)
        y = np.array([rs[i].target for i in ok])
        print(f"{split}: {len(y)} images, prevalence {y.mean():.3f}")
        p0 = predict_arrays(model, ckpt, images)
        row("unadapted", y, p0, ckpt.threshold)
        pe, pi = adapt.em_prior_shift(p0, prior)
        row("em", y, pe, ckpt.threshold, f"estimated prevalence {pi:.3f}")
        pb = predict_arrays(adapt.bn_adapted(model, ckpt, images), ckpt, images)
        row("bn", y, pb, ckpt.threshold)
        pbe, pi = adapt.em_prior_shift(pb, prior)
        row("bn+em", y, pbe, ckpt.threshold, f"estimated prevalence {pi:.3f}")
        if split == "test":  # adapt on one half, score the other
            rng = np.random.default_rng(0)
            half = rng.permutation(len(y)) < len(y) // 2
            pb2 = np.empty(len(y))
            for a in (half, ~half):
                pb2[~a] = predict_arrays(adapt.bn_adapted(model, ckpt, images[a]), ckpt,
                                         images[~a])
            row("bn (other half)", y, pb2, ckpt.threshold)


if __name__ == "__main__":
    main()

"""Print what the shipped model's Grad-CAM maps look at over the whole test split (figures,
not a pass/fail test).

    python benchmarks/heatmap_checks.py [--split test] [--random-images 120]

- Lung-box mass: the share of each map's total inside a rough central lung box (x 15-85%,
  y 10-90% of the image; 56% of its area) vs outside it, where markers, labels and borders
  sit. A map spread evenly would put 56% inside. Maps that are all zero (no pneumonia
  evidence at all) have no mass and are counted apart.
- Deletion (correctly detected pneumonia images): mean drop of the pneumonia probability
  when the 10% most salient pixels are set to the image mean, vs 10% random pixels.
- Model randomisation (Adebayo et al. 2018): Spearman rho between the trained model's map
  and the same architecture's with random weights (seed 0), on detected pneumonia images.
Test images are 224 px copies, so maps are computed and measured at 224 x 224.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from pneumoscan.core.config import config_from_dict
from pneumoscan.data import default_data_dir, scan, select
from pneumoscan.data.decode import load_many
from pneumoscan.explain.explainer import Explainer
from pneumoscan.explain.gradients import blank_pixels
from pneumoscan.inference.torch_backend import predict_arrays
from pneumoscan.models.registry import create_model

BOX = (0.15, 0.85, 0.10, 0.90)  # x0, x1, y0, y1 as fractions of width and height


def inside_fraction(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps -> (N,) share of each map's mass inside BOX (nan for all-zero maps)."""
    _, h, w = maps.shape
    x0, x1, y0, y1 = BOX
    inside = maps[:, round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)].sum(axis=(1, 2))
    total = maps.sum(axis=(1, 2))
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="test")
    parser.add_argument("--random-images", type=int, default=120)
    args = parser.parse_args()
    start = time.perf_counter()
    e = Explainer.from_checkpoint()
    cfg = config_from_dict(e.ckpt.config)  # the carved val split is the checkpoint's own
    records = select(scan(default_data_dir()), args.split, cfg.val_fraction, cfg.seed)
    prep = e.ckpt.preprocessing
    images, ok, errors = load_many([r.path for r in records], prep.input_size, prep.interpolation)
    truth = np.array([records[i].label for i in ok])
    maps = np.concatenate([e.maps(images[i:i + 32]) for i in range(0, len(images), 32)])
    probs = predict_arrays(e.model, e.ckpt, images)
    flagged = probs >= e.ckpt.threshold

    frac = inside_fraction(maps)
    print(f"{args.split}: {len(images)} images ({len(errors)} unreadable); lung box x "
          f"{BOX[0]:.0%}-{BOX[1]:.0%}, y {BOX[2]:.0%}-{BOX[3]:.0%} (56% of the area)")
    print(f"{'images':40s} {'n':>4s} {'zero map':>8s} {'mass inside':>11s} {'outside':>8s} "
          f"{'<50% inside':>11s}")
    groups = {"all": np.ones(len(images), bool), "true PNEUMONIA": truth == "PNEUMONIA",
              "true NORMAL": truth == "NORMAL", "flagged PNEUMONIA": flagged,
              "true NORMAL, flagged (false alarms)": (truth == "NORMAL") & flagged}
    for name, g in groups.items():
        f = frac[g]
        has = f[~np.isnan(f)]
        print(f"{name:40s} {g.sum():4d} {np.isnan(f).sum():8d} {has.mean():11.3f} "
              f"{1 - has.mean():8.3f} {(has < 0.5).mean():11.3f}")

    detected = (truth == "PNEUMONIA") & flagged
    d_img, d_map, d_p = images[detected], maps[detected], probs[detected]
    salient = predict_arrays(e.model, e.ckpt, blank_pixels(d_img, d_map, 0.1))
    rand = predict_arrays(e.model, e.ckpt, blank_pixels(d_img, None, 0.1,
                                                        np.random.default_rng(0)))
    print(f"deletion, {detected.sum()} detected pneumonia images, 10% of pixels -> image mean: "
          f"mean probability drop {np.mean(d_p - salient):.4f} (salient) vs "
          f"{np.mean(d_p - rand):.4f} (random); median {np.median(d_p - salient):.4f} vs "
          f"{np.median(d_p - rand):.4f}")

    n = min(args.random_images, len(d_img))
    torch.manual_seed(0)
    random_model = create_model(e.ckpt.model_name, pretrained=False).eval()
    random_maps = Explainer(random_model, e.ckpt).maps(d_img[:n])
    rhos = np.array([spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(d_map, random_maps)])
    print(f"model randomisation, {n} detected pneumonia images: Spearman rho mean "
          f"{np.nanmean(rhos):.3f}, median {np.nanmedian(rhos):.3f}, max {np.nanmax(rhos):.3f}")
    print(f"{time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()

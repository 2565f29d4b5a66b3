"""Operating point at a new site: a threshold set on a small labelled sample of the site's own
images, written into a new run folder (the input model is never modified).

The rule (`site_threshold`) keeps a target sensitivity with a stated confidence, from order
statistics: with n pneumonia scores sorted ascending s_1 <= ... <= s_n, the threshold s_k
misses a new pneumonia image with probability M ~ Beta(k, n + 1 - k) (the images are
exchangeable with the site's future ones), so P(sensitivity >= target) = P(Binomial(n,
1 - target) >= k). The largest k that reaches the confidence gives the most specific such
threshold. Too few pneumonia images for any k: the lowest score is used and the confidence it
does reach is reported, with the number of images that would be needed.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np

from ..core import contract
from ..data import LABELS, is_image_file
from ..evaluation.metrics import binary_metrics
from ..inference.runtime import make_predictor


class SiteError(ValueError):
    """A site sample or output folder that cannot be used."""


def confidence_of(n: int, k: int, target: float) -> float:
    """P(sensitivity >= target) for the threshold at the k-th lowest of n pneumonia scores:
    P(Binomial(n, 1 - target) >= k)."""
    q = 1.0 - target
    return 1.0 - sum(math.comb(n, i) * q ** i * (1 - q) ** (n - i) for i in range(k))


def needed_positives(target: float, confidence: float) -> int:
    """Fewest pneumonia images for which the lowest score keeps `target` at `confidence`."""
    return math.ceil(math.log(1.0 - confidence) / math.log(target))


def site_threshold(y: np.ndarray, p: np.ndarray, target: float = 0.97,
                   confidence: float = 0.95) -> dict:
    """y (N,) 0/1, p (N,) pneumonia probabilities -> {threshold, k, confidence, ...}.
    A probability >= threshold is called PNEUMONIA."""
    pos = np.sort(np.asarray(p, dtype=float)[np.asarray(y) == 1])
    n = len(pos)
    if n == 0 or (np.asarray(y) == 0).sum() == 0:
        raise SiteError("the site sample needs images of both classes (NORMAL/ and PNEUMONIA/)")
    k = 1
    while k < n and confidence_of(n, k + 1, target) >= confidence:
        k += 1
    return {"threshold": float(pos[k - 1]), "k": k, "n_pneumonia": n,
            "n_normal": int((np.asarray(y) == 0).sum()), "target_sensitivity": target,
            "confidence_requested": confidence,
            "confidence_reached": confidence_of(n, k, target),
            "pneumonia_needed_for_confidence": needed_positives(target, confidence)}


def site_images(site_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """Image files under SITE/NORMAL and SITE/PNEUMONIA (any case, recursive) and labels."""
    site = Path(site_dir)
    if not site.is_dir():
        raise SiteError(f"{site}: not a folder (expected NORMAL/ and PNEUMONIA/ inside)")
    paths, labels = [], []
    for sub in sorted(site.iterdir()):
        if sub.is_dir() and sub.name.upper() in LABELS:
            found = sorted(str(f) for f in sub.rglob("*") if f.is_file() and is_image_file(f))
            paths += found
            labels += [LABELS.index(sub.name.upper())] * len(found)
    if not paths:
        raise SiteError(f"{site}: no images in NORMAL/ or PNEUMONIA/ subfolders")
    return paths, np.array(labels)


def _check_out(out_dir: Path, source: Path) -> None:
    if out_dir.resolve() == source.resolve():
        raise SiteError(f"{out_dir}: --out must be a new folder, not the input model")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SiteError(f"{out_dir}: already exists and is not empty; choose a new folder")


def calibrate_site(model_path, site_dir: str | Path, out_dir: str | Path,
                   target: float = 0.97, confidence: float = 0.95) -> dict:
    """Score the site sample, set the threshold by `site_threshold` and write a copy of the
    model with it into `out_dir`. Unreadable images are listed under `skipped`."""
    if contract.is_ensemble(model_path):
        raise SiteError(f"{model_path}: site calibration takes one run folder, not an ensemble")
    source = contract.resolve(model_path)
    out = Path(out_dir)
    _check_out(out, source)
    paths, y = site_images(site_dir)
    predictor = make_predictor(source, paths=paths)
    results = predictor.predict(paths)
    ok = [i for i, r in enumerate(results) if r.error is None]
    p = np.array([results[i].probability for i in ok])
    y_ok = y[ok]
    rule = site_threshold(y_ok, p, target, confidence)
    before = binary_metrics(y_ok, p, predictor.threshold)
    after = binary_metrics(y_ok, p, rule["threshold"])
    meta = json.loads((source / contract.META).read_text())
    meta.pop("path", None)
    summary = {**rule, "previous_threshold": meta["threshold"],
               "site_sample": {"sensitivity_before": before["sensitivity"],
                               "specificity_before": before["specificity"],
                               "sensitivity_after": after["sensitivity"],
                               "specificity_after": after["specificity"]},
               "created": datetime.now().isoformat(timespec="seconds")}
    meta["threshold"] = rule["threshold"]
    meta["threshold_rule"] = (f"site calibration: pneumonia score {rule['k']} from the "
                              f"lowest of {rule['n_pneumonia']} site images (sensitivity >= "
                              f"{target} with confidence {rule['confidence_reached']:.3f})")
    meta["site_calibration"] = summary
    out.mkdir(parents=True, exist_ok=True)
    # The graph bakes in no threshold: the copy scores on ONNX Runtime as its source did.
    for name in (contract.WEIGHTS, contract.OOD, contract.GRAPH):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    tmp = out / (contract.META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    tmp.replace(out / contract.META)
    return {"model": str(source), "out": str(out), **summary,
            "skipped": [results[i].error for i in range(len(results)) if i not in set(ok)]}

"""The product gates of the issue #14 shipping rule, on val only (docs/experiments.md).

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/product_gates.py RUN [RUN ...]

For each run: (1) the explanation deletion check on the carved val split: of the val
pneumonia images the model flags (every 3rd, at most 60), blank the 10% / 20% most salient
Grad-CAM pixels or as many random ones (seed 0) to the image mean; the salient drop in
P(pneumonia) must exceed the random one. (2) OOD false rejects: the share of val images the
gate flags (<= 1%). The agreement of originals with their copies comes from
`pneumoscan evaluate --shift` (shift.json). Prints one JSON object per run.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from pneumoscan.data import load_records
from pneumoscan.explain.explainer import Explainer
from pneumoscan.explain.gradients import blank_pixels
from pneumoscan.inference.torch_backend import predict_arrays
from pneumoscan.workflows.evaluate import split_images


def gates(run: str, data_dir: str) -> dict:
    e = Explainer.from_checkpoint(run)
    records, images, ok, _ = split_images(load_records(data_dir), e.ckpt, "val", data_dir)
    y = np.array([records[i].target for i in ok])
    probs, _, ood_scores = e.predictor.class_scores(images)
    flagged = np.flatnonzero((y == 1) & (probs >= e.ckpt.threshold))[::3][:60]
    x, p = images[flagged], probs[flagged]
    maps = e.maps(x)
    out = {"run": run, "n_deletion": len(flagged)}
    for frac in (0.1, 0.2):
        sal = predict_arrays(e.model, e.ckpt, blank_pixels(x, maps, frac))
        rnd = predict_arrays(e.model, e.ckpt, blank_pixels(x, None, frac,
                                                           np.random.default_rng(0)))
        out[f"drop_salient_{int(frac * 100)}"] = float(np.mean(p - sal))
        out[f"drop_random_{int(frac * 100)}"] = float(np.mean(p - rnd))
    out["deletion_pass"] = out["drop_salient_10"] > out["drop_random_10"]
    ood_gate = e.ckpt.ood or {}
    if ood_gate:
        rejects = float(np.mean(ood_scores > ood_gate["threshold"]))
        out.update({"ood_val_false_reject": rejects, "ood_pass": rejects <= 0.01})
    return out


if __name__ == "__main__":
    data = os.environ["PNEUMOSCAN_DATA"]
    for run in sys.argv[1:]:
        print(json.dumps(gates(run, data)), flush=True)

"""The product gates of the issue #14 shipping rule, on val only (docs/experiments.md).

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/product_gates.py RUN [RUN ...]

For each run: (1) the explanation deletion check on the carved val split: of the val
pneumonia images the model flags (every 3rd, at most 60), blank the 10% / 20% most salient
Grad-CAM pixels or as many random ones (seed 0) to the image mean; the salient drop in
P(pneumonia) must be positive and exceed the random one (rule 4's G4). The same drops with the
pixels filled from a blur of the image instead of its mean are reported as *_blur, and
drop_moved_* blanks the salient region's shape moved elsewhere (shifted_maps) instead of
scattered random pixels (neither is gated).
(2) OOD false rejects: the share of val images the gate flags (<= 1%, G5). (3) The test
suite's examples check (G6): the run on the 16 official-val originals in examples/, all 8
pneumonias found and at least 12 of 16 right, as tests/test_predict.py asks of the shipped
model. The agreement of originals with their copies (G3) comes from
benchmarks/originals_agreement.py, the NORMAL2 floor (G7) from benchmarks/batch_specificity.py.
Prints one JSON object per run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumoscan.data import load_records
from pneumoscan.explain.explainer import Explainer
from pneumoscan.explain.gradients import blank_pixels, shifted_maps
from pneumoscan.inference.runtime import load_torch
from pneumoscan.inference.torch_backend import predict_arrays
from pneumoscan.workflows.evaluate import split_images
from tests.product_checks import examples_check


def gates(run: str, data_dir: str) -> dict:
    e = Explainer.from_checkpoint(run)
    records, images, ok, _ = split_images(load_records(data_dir), e.ckpt, "val", data_dir)
    y = np.array([records[i].target for i in ok])
    probs, _, ood_scores = e.predictor.class_scores(images)
    flagged = np.flatnonzero((y == 1) & (probs >= e.ckpt.threshold))[::3][:60]
    x, p = images[flagged], probs[flagged]
    maps = e.maps(x)
    out = {"run": run, "n_deletion": len(flagged)}
    for fill in ("mean", "blur"):  # rule 4 gates the mean fill; the blur fill is reported
        tag = "" if fill == "mean" else "_blur"
        for frac in (0.1, 0.2):
            sal = predict_arrays(e.model, e.ckpt, blank_pixels(x, maps, frac, fill=fill))
            rnd = predict_arrays(e.model, e.ckpt, blank_pixels(
                x, None, frac, np.random.default_rng(0), fill=fill))
            moved = predict_arrays(e.model, e.ckpt, blank_pixels(
                x, shifted_maps(maps, np.random.default_rng(0)), frac, fill=fill))
            out[f"drop_salient_{int(frac * 100)}{tag}"] = float(np.mean(p - sal))
            out[f"drop_random_{int(frac * 100)}{tag}"] = float(np.mean(p - rnd))
            out[f"drop_moved_{int(frac * 100)}{tag}"] = float(np.mean(p - moved))
    out["deletion_pass"] = out["drop_salient_10"] > max(0.0, out["drop_random_10"])
    ood_gate = e.ckpt.ood or {}
    if ood_gate:
        rejects = float(np.mean(ood_scores > ood_gate["threshold"]))
        out.update({"ood_val_false_reject": rejects, "ood_pass": rejects <= 0.01})
    out.update(examples_check(load_torch(run)))
    return out


if __name__ == "__main__":
    data = os.environ["PNEUMOSCAN_DATA"]
    for run in sys.argv[1:]:
        print(json.dumps(gates(run, data)), flush=True)

"""How many labelled images does a new site need? (issue #14, part 3)

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/site_calibration.py [--model RUN]

Treats the test split as "a new site": scores it once with the model, then, many times over,
splits its patients at random into a calibration half and an evaluation half, draws 25 / 50 /
100 labelled images per class from the calibration half, sets the threshold with
`site.site_threshold` (sensitivity >= 0.97 with confidence 0.95, as `pneumoscan calibrate
--site` does) and measures sensitivity and specificity on the whole evaluation half.
Prints the median and 10th percentile of each. These are **site-calibrated** figures: they
never replace the model's out-of-the-box test figures.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from pneumoscan.data import load_records, select
from pneumoscan.evaluation.metrics import binary_metrics
from pneumoscan.inference.runtime import make_predictor
from pneumoscan.workflows.site import site_threshold


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    records = select(load_records(args.data), "test", 0.1, 0)
    paths = [str(r.path) for r in records]
    predictor = make_predictor(args.model, paths=paths)
    p = np.array([r.probability for r in predictor.predict(paths)])
    y = np.array([r.target for r in records])
    patients = np.array([f"{r.label}/{r.patient}" for r in records])
    unique = np.unique(patients)
    out = {"model": args.model or "shipped", "n_test": len(y), "patients": len(unique),
           "repeats": args.repeats, "target": args.target, "confidence": args.confidence,
           "seed": args.seed, "out_of_the_box": binary_metrics(y, p, predictor.threshold),
           "sizes": {}}
    rng = np.random.default_rng(args.seed)
    print(f"test split as a new site: {len(y)} images, {len(unique)} patients; model "
          f"{out['model']} (stored threshold {predictor.threshold:.4f}: sensitivity "
          f"{out['out_of_the_box']['sensitivity']:.3f}, specificity "
          f"{out['out_of_the_box']['specificity']:.3f})")
    for n in args.sizes:
        sens, spec, thr = [], [], []
        for _ in range(args.repeats):
            cal_patients = set(rng.permutation(unique)[: len(unique) // 2])
            cal = np.array([q in cal_patients for q in patients])
            pick = np.concatenate([rng.choice(np.flatnonzero(cal & (y == c)),
                                              size=min(n, int((cal & (y == c)).sum())),
                                              replace=False) for c in (0, 1)])
            t = site_threshold(y[pick], p[pick], args.target, args.confidence)["threshold"]
            m = binary_metrics(y[~cal], p[~cal], t)
            sens.append(m["sensitivity"])
            spec.append(m["specificity"])
            thr.append(t)
        sens, spec = np.array(sens), np.array(spec)
        row = {"sensitivity_median": float(np.median(sens)),
               "sensitivity_p10": float(np.percentile(sens, 10)),
               "specificity_median": float(np.median(spec)),
               "specificity_p10": float(np.percentile(spec, 10)),
               "share_sensitivity_ge_target": float((sens >= args.target).mean()),
               "threshold_median": float(np.median(thr))}
        out["sizes"][n] = row
        print(f"{n:4d} per class: sensitivity median {row['sensitivity_median']:.3f} "
              f"(p10 {row['sensitivity_p10']:.3f}, >= {args.target} in "
              f"{row['share_sensitivity_ge_target']:.0%}), specificity median "
              f"{row['specificity_median']:.3f} (p10 {row['specificity_p10']:.3f}), "
              f"threshold median {row['threshold_median']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()

"""Test figures of several runs with 95% patient-bootstrap intervals, one JSON line per run.
Reporting only: the runs were fixed (and their val rows written) before this is run.

    PYTHONPATH=src PNEUMOSCAN_DATA=/work/shared/data/chest_xray \\
        python benchmarks/recipe_cis.py runs/r3-seed42 runs/r3-seed0 runs/r3-seed1

Same scoring as `pneumoscan evaluate --split test` (evaluate.split_images + class_scores at the
stored threshold); intervals from metrics.bootstrap_ci (2,000 patient resamples, seed 0).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from pneumoscan.data import default_data_dir, load_records
from pneumoscan.evaluation.metrics import bootstrap_ci
from pneumoscan.inference.runtime import load_torch
from pneumoscan.workflows.evaluate import split_images


def main(runs: list[str], split: str = "test") -> None:
    data = default_data_dir()
    records_all = load_records(data)
    for run in runs:
        predictor = load_torch(run)
        records, images, ok, _ = split_images(records_all, predictor.ckpt, split, data)
        y = np.array([records[i].target for i in ok])
        groups = np.array([records[i].patient for i in ok])
        probs = predictor.class_scores(images)[0]
        ci = bootstrap_ci(y, probs, predictor.threshold, groups=groups)
        print(json.dumps({"run": run, "split": split, "n": len(y), **{
            k: [round(ci[k][f], 4) for f in ("value", "low", "high")]
            for k in ("auroc", "sensitivity", "specificity", "accuracy")}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Round 5, step 0 (docs/experiments.md): how far each run's probability moves between a
full-size original and its 224 px copy, for each Gaussian smoothing sigma of the contract.
Train originals only by default (the val and test ones are gates and reports).

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/smoothing_sigma.py RUN [RUN ...]
        [--sigmas 0 0.5 0.75 1 1.25 1.5 2] [--split train]

Each run's own contract otherwise (storage step included); probabilities at its stored
temperature. Prints max and mean |dp| and |d logit| per run and sigma.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from pneumoscan.data.decode import load_gray
from pneumoscan.inference.runtime import make_predictor
from pneumoscan.workflows.shift import find_originals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--sigmas", nargs="+", type=float, default=[0, 0.5, 0.75, 1, 1.25, 1.5, 2])
    args = ap.parse_args()
    data = Path(args.data)
    originals = find_originals(data)
    with open(originals / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == args.split]
    print(f"{len(rows)} {args.split} originals")
    for run in args.runs:
        pr = make_predictor(run, runtime="torch")
        base = pr.ckpt.preprocessing
        pair = [np.stack([load_gray(root / r["path"], base.input_size, base.interpolation,
                                    storage_quality=base.storage_quality) for r in rows])
                for root in (originals, data)]
        for s in args.sigmas:
            pr.ckpt.preprocessing = dataclasses.replace(base, smoothing=s)
            pa, pb = (np.clip(pr.probabilities(x), 1e-7, 1 - 1e-7) for x in pair)
            dp = np.abs(pa - pb)
            dz = np.abs(np.log(pa / (1 - pa)) - np.log(pb / (1 - pb)))
            print(f"{Path(run).name:14s} sigma {s:4.2f}  max |dp| {dp.max():.3f}  mean "
                  f"{dp.mean():.4f}  max |dlogit| {dz.max():.3f}  mean {dz.mean():.3f}",
                  flush=True)


if __name__ == "__main__":
    main()

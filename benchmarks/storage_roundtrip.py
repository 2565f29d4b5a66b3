"""Is the original-vs-copy gap a storage gap? (issue #14, P1 in docs/experiments.md)

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/storage_roundtrip.py [--model M]

Scores the **train** originals of ../shared/data/originals (never the test ones) decoded in
several ways against their 224 px copies in the dataset, with the model's weights as they are:
the user path (draft-mode decode, squash resize), a full decode, each followed or not by one
JPEG quality-75 round trip (how the copies were stored), and the copies themselves re-encoded
at q75. Prints mean / max |p - p(copy)| and label flips per way.

    ... storage_roundtrip.py --pixels

prints instead, for each storage quality, how closely the user path reproduces the copies'
pixels (mean absolute grey-level error): rule 3, step 0 in docs/experiments.md.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumoscan.data.decode import _to_gray8, load_gray, store_as_jpeg
from pneumoscan.inference.runtime import make_predictor


def decode(path: Path, quality: int, draft: bool) -> np.ndarray:
    with Image.open(path) as img:
        if draft:
            img.draft("L", (448, 448))
        gray = _to_gray8(ImageOps.exif_transpose(img))
        gray.load()
    gray = gray.resize((224, 224), Image.Resampling.BILINEAR)
    return np.asarray(store_as_jpeg(gray, quality) if quality else gray)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--pixels", action="store_true",
                    help="pixel reproduction error per storage quality; no model")
    args = ap.parse_args()
    data = Path(args.data)
    originals = data.resolve().parent / "originals"
    rows = [r for r in csv.DictReader(open(originals / "manifest.csv"))
            if r["split"] == "train"]
    if args.pixels:
        copies = [load_gray(data / r["path"], 224).astype(float) for r in rows]
        print(f"{len(rows)} train originals, user path (draft decode, bilinear squash) + storage")
        for q in (0, 50, 60, 70, 75, 80, 90):
            err = [np.abs(load_gray(originals / r["path"], 224, storage_quality=q) - c).mean()
                   for r, c in zip(rows, copies, strict=True)]
            print(f"storage_quality {q:3d}: mean abs error {np.mean(err):.3f} grey levels "
                  f"(worst image {np.max(err):.3f})")
        return
    predictor = make_predictor(args.model)
    # the weights as they are: no storage step of the contract's own
    copies = np.stack([load_gray(data / r["path"], 224) for r in rows])
    p_copy = predictor.probabilities(copies)
    ways = {
        "user path (draft decode)": [decode(originals / r["path"], 0, True) for r in rows],
        "full decode": [decode(originals / r["path"], 0, False) for r in rows],
        "draft decode + q75": [decode(originals / r["path"], 75, True) for r in rows],
        "full decode + q75": [decode(originals / r["path"], 75, False) for r in rows],
        "copies + q75 again": [np.asarray(store_as_jpeg(Image.fromarray(c), 75))
                               for c in copies],
    }
    t = predictor.threshold
    print(f"{len(rows)} train originals; model {args.model or 'shipped'} (threshold {t:.4f})")
    for name, arrays in ways.items():
        p = predictor.probabilities(np.stack(arrays))
        d = np.abs(p - p_copy)
        flips = int(((p >= t) != (p_copy >= t)).sum())
        print(f"{name:26s} mean |dp| {d.mean():.4f}  max |dp| {d.max():.4f}  flips {flips}")


if __name__ == "__main__":
    main()

"""Gate G7 of rule 4 (docs/experiments.md, issue #14): specificity on the carved val split's
healthy children by the dataset's naming batch (NORMAL2-IM-* against IM-*), clean and under the
shift validation's 12% zoom-in, at each model's stored threshold. Val only, never test.

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/batch_specificity.py RUN [RUN ...]
        [--split-of RUN] [--floor 0.85]

The official val normals, and 70% of the test normals, are NORMAL2 children; a model that reads
their framing is near-certain about them clean and loses them under the zoom (R1: 0.987 ->
0.221). Every run scores the same carved val (that of --split-of, default the first RUN), so
runs trained on one split are compared image for image. Prints one JSON object per run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from pneumoscan.core.contract import read
from pneumoscan.data import load_records, name_family
from pneumoscan.data.decode import load_many
from pneumoscan.data.runs import split_of_run
from pneumoscan.inference.runtime import make_predictor
from pneumoscan.workflows.shift import decode_shifted, shift_named

ZOOM = "zoom_in_12"


def specificity_by_batch(run: str, normals: list, floor: float) -> dict:
    predictor = make_predictor(run)  # the runtime `pneumoscan evaluate --shift` uses
    prep, thr = predictor.ckpt.preprocessing, predictor.threshold
    clean, ok, errors = load_many([r.path for r in normals], prep.input_size,
                                  prep.interpolation, storage_quality=prep.storage_quality)
    if errors:
        raise RuntimeError(f"{run}: {len(errors)} val normals could not be read: {errors}")
    batches = np.array(["NORMAL2" if name_family(Path(normals[i].path).name) == "NORMAL2-IM"
                        else "IM" for i in ok])
    p = {"clean": predictor.probabilities(clean),
         ZOOM: predictor.probabilities(decode_shifted(clean, shift_named(ZOOM), prep))}
    out: dict = {"run": run, "threshold": thr}
    for b in ("NORMAL2", "IM"):
        sel = batches == b
        out[b] = {"n": int(sel.sum()),
                  **{view: round(float(np.mean(v[sel] < thr)), 4) for view, v in p.items()},
                  "p90_clean": round(float(np.quantile(p["clean"][sel], 0.9)), 4)}
    out["g7_pass"] = min(out["NORMAL2"]["clean"], out["NORMAL2"][ZOOM]) >= floor
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split-of", default=None,
                    help="run whose carved val split is scored (default: the first run)")
    ap.add_argument("--floor", type=float, default=0.85)
    ap.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"))
    args = ap.parse_args()
    config = read(Path(args.split_of or args.runs[0])).config
    val = split_of_run(config, load_records(args.data), "val")
    normals = [r for r in val if r.label == "NORMAL"]
    for run in args.runs:
        print(json.dumps(specificity_by_batch(run, normals, args.floor)), flush=True)


if __name__ == "__main__":
    main()

"""The same X-ray from two files: every original in ../shared/data/originals scored from its
full-size file and from its 224 px copy in the dataset (issue #14's agreement target).

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/originals_agreement.py [--model M]
        [--splits train val test]

The test originals are for reporting only (scored once per shipped model, after the decision);
`pneumoscan evaluate --shift` reads the train and val ones.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pneumoscan.inference.runtime import make_predictor
from pneumoscan.workflows.shift import find_originals, originals_agreement


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    predictor = make_predictor(args.model)
    r = originals_agreement(predictor, data, find_originals(data), tuple(args.splits))
    worst = max(r.values(), key=lambda v: v["max_abs_dp"])
    for split, v in r.items():
        extra = (f", classes max |dp| {v['max_abs_dp_classes']:.4f}, etiology flips "
                 f"{v['etiology_flips']}" if "etiology_flips" in v else "")
        print(f"{split:5s} n {v['n']:2d}: mean |dp| {v['mean_abs_dp']:.4f}, max |dp| "
              f"{v['max_abs_dp']:.4f}, label flips {v['label_flips']}{extra}")
    print(f"all: max |dp| {worst['max_abs_dp']:.4f}, label flips "
          f"{sum(v['label_flips'] for v in r.values())}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()

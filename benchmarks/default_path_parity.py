"""Does the default `pneumoscan predict` path (ONNX Runtime fp32, cached export) give what the
torch fp32 reference gives, on every image of a split? Figures, not a test.

    PYTHONPATH=src PNEUMOSCAN_DATA=/work/shared/data/chest_xray \\
        python benchmarks/default_path_parity.py [--model RUN] [--split test] [--originals]

Both predictors score the same files end to end (decode, model, OOD gate), through the same
Predictor.predict; printed: max |probability difference|, label flips at the stored threshold,
AUROC of each, max relative OOD-score difference and OOD flag flips.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pneumoscan.data import default_data_dir, scan, select
from pneumoscan.evaluation.metrics import auroc
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.inference.runtime import make_predictor


def compare(model: str | None, paths: list[str], targets: list[int] | None) -> dict:
    default = make_predictor(model, "auto", paths)
    reference = make_predictor(model, "torch")
    a, b = default.predict(paths), reference.predict(paths)
    ok = [i for i, r in enumerate(b) if r.error is None]
    pa = np.array([a[i].probability for i in ok])
    pb = np.array([b[i].probability for i in ok])
    out = {"default_runtime": type(default).__name__, "n": len(ok),
           "max_abs_prob_diff": float(np.abs(pa - pb).max()),
           "label_flips": sum(a[i].label != b[i].label for i in ok)}
    if b[ok[0]].ood_score is not None:
        sa = np.array([a[i].ood_score for i in ok])
        sb = np.array([b[i].ood_score for i in ok])
        out["max_rel_ood_score_diff"] = float((np.abs(sa - sb) / sb).max())
        out["ood_flag_flips"] = sum(a[i].ood != b[i].ood for i in ok)
    if targets is not None:
        y = np.array([targets[i] for i in ok])
        out["auroc_default"], out["auroc_torch"] = auroc(y, pa), auroc(y, pb)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--originals", action="store_true", help="also the full-size originals")
    args = ap.parse_args()
    data = default_data_dir()
    records = select(scan(data), args.split, 0.1, 42)  # test/val-official ignore the carving
    result = {args.split: compare(args.model, [r.path for r in records],
                                  [r.target for r in records])}
    if args.originals:
        result["originals"] = compare(args.model, expand_inputs([str(data.parent / "originals")]),
                                      None)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

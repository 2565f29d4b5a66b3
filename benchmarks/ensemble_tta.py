"""Figures of ensembles and test-time augmentation on real runs (README, docs/experiments.md).

Each member's logits on each split and TTA view are computed once and cached (a .npy per
member/split/view under --cache), so the figures of members, ensembles and TTA come from the
same forward passes; the arithmetic is the library's (predict.probabilities_from_logits, the
mean of member probabilities as the ensemble backend, metrics.headline_metrics at the stored
thresholds). Nothing is chosen here: thresholds come from model.json / ensemble.json.

    python benchmarks/ensemble_tta.py --data $PNEUMOSCAN_DATA --cache /tmp/ens-cache \
        --members runs/a runs/b runs/c --ensemble ens-plain --ensemble-tta ens-tta \
        [--views identity|all] [--splits val test]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pneumoscan.core.config import config_from_dict
from pneumoscan.core.decisions import probabilities_from_logits
from pneumoscan.data import load_records, select
from pneumoscan.data.decode import load_many
from pneumoscan.evaluation.metrics import headline_metrics
from pneumoscan.inference import tta
from pneumoscan.inference.export import onnx_logits
from pneumoscan.inference.torch_backend import predict_logits
from pneumoscan.models import weights as checkpoint


def member_logits(folder: Path, records_all, split: str, views, cache: Path,
                  onnx_dir: Path | None = None) -> tuple:
    """(targets, [logits per view]) of a member on its own `split` (val is its own carve).
    The shifted/zoomed views run on ONNX Runtime when onnx_dir holds <member>.onnx (3x faster
    on this CPU; probabilities within 2e-6 of torch); the identity always runs on torch."""
    model, ckpt = checkpoint.load(folder)
    cfg = config_from_dict(ckpt.config)
    recs = select(records_all, split, cfg.val_fraction, cfg.data_seed, cfg.limit_per_class)
    prep = ckpt.preprocessing
    images = None
    out = []
    for v in views:
        f = cache / f"{folder.name}-{split}-v{tta.VIEWS.index(v)}.npz"
        if not f.is_file():
            if images is None:
                images, ok, _ = load_many([r.path for r in recs], prep.input_size,
                                          prep.interpolation)
                targets = np.array([recs[j].target for j in ok])
            t0 = time.perf_counter()
            onnx = onnx_dir / f"{folder.name}.onnx" if onnx_dir else None
            if v != tta.IDENTITY[0] and onnx is not None and onnx.is_file():
                z = onnx_logits(onnx, tta.view(images, *v)).astype(np.float32)
            else:
                z = predict_logits(model, ckpt, tta.view(images, *v))
            np.savez(f, logits=z, targets=targets)
            print(f"  {f.name}: {len(z)} images in {time.perf_counter() - t0:.0f} s", flush=True)
        d = np.load(f)
        out.append(d["logits"])
        targets = d["targets"]
    return targets, out, ckpt


def probs(ckpt, logits: list[np.ndarray]) -> np.ndarray:
    """Mean over views of the member's pneumonia probability (tta.probabilities' arithmetic)."""
    return np.mean([probabilities_from_logits(z, ckpt) for z in logits], axis=0)


def row(name: str, split: str, y, p, threshold: float) -> dict:
    m = headline_metrics(y, p, threshold)
    return {"model": name, "split": split, **{k: m[k] for k in
            ("n", "auroc", "sensitivity", "specificity", "accuracy", "threshold")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--members", nargs="+", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--ensemble", default=None, help="ensemble folder built without TTA")
    ap.add_argument("--ensemble-tta", default=None, help="ensemble folder built with --tta")
    ap.add_argument("--onnx-dir", default=None, help="<member>.onnx files for the TTA views")
    ap.add_argument("--views", choices=("identity", "all"), default="all")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--tta-val", nargs="*", default=None,
                    help="members (folder names) whose own val gets all TTA views (default all)")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    records = load_records(args.data)
    rows, test = [], {}
    for folder in map(Path, args.members):
        for split in args.splits:
            views = tta.IDENTITY
            if args.views == "all" and (split != "val" or args.tta_val is None
                                        or folder.name in args.tta_val):
                views = tta.VIEWS
            y, logits, ckpt = member_logits(folder, records, split, views, cache,
                                            args.onnx_dir and Path(args.onnx_dir))
            rows.append(row(folder.name, split, y, probs(ckpt, logits[:1]), ckpt.threshold))
            if len(logits) > 1:
                rows.append(row(folder.name + " +TTA", split, y, probs(ckpt, logits),
                                ckpt.threshold))
            if split == "test":
                test[folder.name] = (y, ckpt, logits)
    for ens, use_tta in ((args.ensemble, False), (args.ensemble_tta, True)):
        if ens is None or len(test) < 2:
            continue
        meta = json.loads((Path(ens) / "ensemble.json").read_text())
        y = next(iter(test.values()))[0]
        if use_tta and any(len(lg) < len(tta.VIEWS) for _, _, lg in test.values()):
            continue
        p = np.mean([probs(c, lg if use_tta else lg[:1]) for _, c, lg in test.values()],
                    axis=0)
        rows.append(row(f"ensemble{' +TTA' if use_tta else ''} ({meta['threshold_split']} "
                        f"threshold)", "test", y, p, meta["threshold"]))
    cols = ["model", "split", "n", "auroc", "sensitivity", "specificity", "accuracy",
            "threshold"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

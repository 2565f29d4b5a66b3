"""The verbs that score a run on a split: evaluate (report, shift, adaptation), calibrate
(and --site), model-card."""

from __future__ import annotations

import json
import sys

from ..core.tables import fmt as _fmt
from ..core.tables import table as _table
from ._common import SOME_FAILED, USAGE_ERROR
from ._common import data_dir as _data_dir


def cmd_evaluate(args) -> int:
    models = args.model or [None]
    if args.shift:
        return _evaluate_shift(args, models)
    if args.adapt:
        return _evaluate_adapted(args, models)
    if args.report or len(models) > 1:
        return _evaluate_report(args, models)
    from ..workflows.evaluate import evaluate

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
    from ..workflows.shift import shift_validation

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
        from ..evaluation.report_html import write_robustness

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
    from ..workflows.adapt import evaluate_adapted

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
    from ..evaluation.metrics import MetricError, mean_std
    from ..evaluation.report import write_report
    from ..workflows.evaluate import evaluate

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


def refuse_shipped(args, verb: str) -> str | None:
    """Commands that rewrite a model need an explicit --model that is not a shipped model
    (the installed package is never modified); the message, or None when it may go on."""
    from ..core.contract import CheckpointError, resolve, shipped_models

    if args.model is None:
        return (f"pneumoscan {verb}: --model RUN is required: it rewrites that run's "
                f"model.json (the shipped models are never modified; copy one into a folder "
                f"of yours first)")
    try:
        folder = resolve(args.model).resolve()
    except CheckpointError:
        return None  # the command itself reports the bad path
    if any(folder == d.resolve() for d in shipped_models().values()):
        return (f"pneumoscan {verb}: {args.model} is a shipped model inside the installed "
                f"package and is never modified; copy it into a folder of yours first")
    return None


def cmd_calibrate(args) -> int:
    if args.site:
        return _calibrate_site(args)
    refusal = refuse_shipped(args, "calibrate")
    if refusal:
        print(refusal, file=sys.stderr)
        return USAGE_ERROR
    from ..evaluation.calibration import calibrate

    s = calibrate(args.model, _data_dir(args))
    print(f"{s['model']}: temperature {s['temperature']:.4f} (fitted on {s['n_val']} val "
          f"images), threshold {s['previous_threshold']:.4f} -> {s['threshold']:.4f}, val ECE "
          f"{s['val_ece_before']:.4f} -> {s['val_ece_after']:.4f}; model.json rewritten")
    from ..evaluation import meaningful

    warning = meaningful.temperature(s["temperature"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _calibrate_site(args) -> int:
    from ..workflows.site import SiteError, calibrate_site

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


def cmd_model_card(args) -> int:
    from ..evaluation.model_card import ModelCardError, write_model_card

    try:
        print(f"model card: {write_model_card(args.model, args.metrics, args.out)}")
    except ModelCardError as e:
        print(f"pneumoscan model-card: {e}", file=sys.stderr)
        return USAGE_ERROR
    return 0

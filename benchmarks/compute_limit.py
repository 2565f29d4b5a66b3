"""How fast can end-to-end prediction on full-size originals get on this CPU? The arithmetic
behind the "5x the naive pipeline" target, from single-core CPU time (which contention from
other jobs inflates far less than wall time does). Figures, not a test.

    PYTHONPATH=src PNEUMOSCAN_DATA=/work/shared/data/chest_xray \\
        python benchmarks/compute_limit.py [--int8 FILE] [--n 16]

Each stage runs on one thread and is timed by the process's CPU time (median of repeats):
full-size PIL decode + resize (the naive pipeline's), draft-mode decode (load_gray's), the torch
fp32 NCHW batch-1 forward (naive), ONNX Runtime fp32 and INT8 at batch 32. With perfect scaling
over C cores, a pipeline cannot beat C / (decode + model core-seconds per image) images/s.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from pneumoscan.data import default_data_dir
from pneumoscan.data.decode import load_gray, load_many
from pneumoscan.inference.export import export_model
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.models import weights as checkpoint
from pneumoscan.workflows.bench import machine, median_time


def cpu_seconds(fn, repeats: int = 3) -> float:
    return median_time(fn, repeats, clock=time.process_time)


def naive_decode(paths, size):
    for p in paths:
        with Image.open(p) as img:
            np.asarray(img.convert("L").resize((size, size), Image.BILINEAR), np.float32)


def onnx_session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--int8", default=None, help="an INT8 export to time as well")
    ap.add_argument("--n", type=int, default=16, help="originals decoded per timing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = machine()
    model, ckpt = checkpoint.load(None)
    size = ckpt.preprocessing.input_size
    paths = expand_inputs([str(default_data_dir().parent / "originals")])[:args.n]
    images = load_many(paths, size)[0]
    batch = np.concatenate([images] * (32 // len(images) + 1))[:32, None]
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    gflop = counter.get_total_flops() / 1e9
    x1 = torch.zeros(1, 3, size, size)
    per_image = {
        "decode full-size PIL + resize (naive)": cpu_seconds(lambda: naive_decode(paths, size))
        / len(paths),
        "decode draft mode (load_gray)": cpu_seconds(lambda: [load_gray(p, size) for p in paths])
        / len(paths)}
    with torch.inference_mode():
        per_image["torch fp32 NCHW batch 1 (naive)"] = cpu_seconds(lambda: model(x1), 10)
    import tempfile
    from pathlib import Path

    fp32 = Path(tempfile.mkdtemp()) / "fp32.onnx"
    export_model(model, ckpt, fp32, images[:8])
    sessions = {"onnx fp32 batch 32": onnx_session(fp32)}
    if args.int8:
        sessions["onnx int8 batch 32"] = onnx_session(args.int8)
    for name, sess in sessions.items():
        per_image[name] = cpu_seconds(lambda s=sess: s.run(["logit"], {"image": batch})) / 32
    cores = info["cores"]
    pipelines = {
        "naive (full decode + torch fp32 batch 1)": ("decode full-size PIL + resize (naive)",
                                                      "torch fp32 NCHW batch 1 (naive)"),
        "draft decode + onnx fp32": ("decode draft mode (load_gray)", "onnx fp32 batch 32")}
    if args.int8:
        pipelines["draft decode + onnx int8"] = ("decode draft mode (load_gray)",
                                                 "onnx int8 batch 32")
    bounds = {name: round(cores / (per_image[d] + per_image[m]), 1)
              for name, (d, m) in pipelines.items()}
    print(json.dumps({
        "cpu": info["cpu"], "cores": cores, "peak_fp32_gflops": info["peak_fp32_gflops"],
        "peak_formula": info["peak_formula"], "gflop_per_image": round(gflop, 3),
        "model_only_bound_at_peak_img_s": round(info["peak_fp32_gflops"] / gflop, 1),
        "core_ms_per_image": {k: round(1000 * v, 2) for k, v in per_image.items()},
        "fraction_of_peak_single_core": {
            k: round(gflop / v / (info["peak_fp32_gflops"] / cores), 3)
            for k, v in per_image.items() if "decode" not in k},
        f"bound_img_s_on_{cores}_cores": bounds}, indent=2))


if __name__ == "__main__":
    main()

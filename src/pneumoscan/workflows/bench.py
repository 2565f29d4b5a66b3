"""`pneumoscan bench`: speed figures measured side by side in one run (figures, not tests).

Every figure is the median of `repeats` timed runs after one warm-up run. Peak RSS is the
process's peak resident memory after each stage (cumulative: stages run in one process).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core import progress
from ..core.decisions import probabilities_from_logits
from ..core.tables import table
from ..data import scan, select
from ..data.decode import load_many
from ..evaluation.metrics import auroc
from ..inference.export import INPUT, export_from_data, onnx_logits
from ..inference.onnx import OnnxBackend
from ..inference.predictor import Predictor, expand_inputs
from ..inference.runtime import make_predictor
from ..inference.torch_backend import predict_arrays, torch_predictor
from ..models import weights as checkpoint
from ..models.registry import create_model

# fp32 peak = cores x clock x SIMD lanes x 2 (an FMA is two FLOPs) x FMA pipes per core.
FP32_LANES = {"avx512f": 16, "avx2": 8}
FMA_PIPES = 2  # Zen 4/5 and Intel server cores issue two vector FMAs per cycle


@dataclass
class BenchOptions:
    data_dir: Path
    quick: bool = False
    repeats: int = 3


def median_time(fn, repeats: int, warm_up=None, clock=time.perf_counter) -> float:
    """Median seconds of `repeats` runs of fn after one warm-up run, on `clock` (wall time by
    default; time.process_time gives the process's CPU time)."""
    (warm_up or fn)()
    runs = []
    for _ in range(repeats):
        t = clock()
        fn()
        runs.append(clock() - t)
    return statistics.median(runs)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = {k.strip(): v.strip() for k, _, v in
             (line.partition(":") for line in info.splitlines()) if v}
    flags = set(field.get("flags", "").split())
    lanes = next((n for f, n in FP32_LANES.items() if f in flags), 4)
    mhz = float(field.get("cpu MHz", 0) or 0)
    cores = os.cpu_count() or 1
    import onnxruntime
    import timm

    return {"cpu": field.get("model name", platform.processor()), "cores": cores,
            "clock_ghz": round(mhz / 1000, 3), "fp32_lanes": lanes,
            "bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
            "peak_fp32_gflops": round(cores * mhz / 1000 * lanes * 2 * FMA_PIPES, 1),
            "peak_formula": f"{cores} cores x {mhz / 1000:.2f} GHz x {lanes} fp32 lanes x "
                            f"2 (FMA) x {FMA_PIPES} FMA pipes",
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "timm": timm.__version__, "pillow": Image.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


class NaivePipeline:
    """The original project's way: full-size PIL decode, resize, fp32 NCHW eager, batch 1.
    Deliberately not the package's transforms: it is the baseline being measured against."""

    def __init__(self, model, ckpt):
        self.model = model.eval().to(memory_format=torch.contiguous_format)
        self.prep = ckpt.preprocessing

    @torch.inference_mode()
    def predict(self, paths: list[str]) -> list[float]:
        out = []
        for p in paths:
            with Image.open(p) as img:
                img = img.convert("L").resize((self.prep.input_size,) * 2, Image.BILINEAR)
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
            x = ((x - self.prep.mean) / self.prep.std).expand(1, 3, -1, -1).contiguous()
            out.append(float(torch.sigmoid(self.model(x))[0, 0]))
        return out


def end_to_end(pipelines: dict, sets: dict[str, list[str]], repeats: int) -> list[dict]:
    rows = []
    shown = progress.bar(len(sets) * len(pipelines), "bench: end to end", unit="pipeline")
    for set_name, paths in sets.items():
        base = None
        for name, predict in pipelines.items():
            s = median_time(lambda f=predict, p=paths: f(p), repeats,
                            warm_up=lambda f=predict, p=paths: f(p[:8]))
            shown.update()
            ips = len(paths) / s
            base = base or ips
            rows.append({"images": set_name, "n": len(paths), "pipeline": name,
                         "images_per_s": round(ips, 1), "x_naive": round(ips / base, 2),
                         "peak_rss_mb": round(peak_rss_mb())})
    shown.close()
    return rows


def _model_row(name: str, run, repeats: int, gflop: float, peak_gflops: float) -> dict:
    """Batch-32 throughput (median of repeats) and batch-1 latency of `run(batch)`."""
    s32 = median_time(lambda: run(32), repeats)
    run(1)
    lat = []
    for _ in range(max(10, repeats * 10)):
        t = time.perf_counter()
        run(1)
        lat.append(time.perf_counter() - t)
    ips = 32 / s32
    return {"model": name, "batch32_images_per_s": round(ips, 1),
            "batch1_p50_ms": round(1000 * float(np.percentile(lat, 50)), 1),
            "batch1_p95_ms": round(1000 * float(np.percentile(lat, 95)), 1),
            "gflop_per_image": round(gflop, 3),
            "fraction_of_fp32_peak": round(ips * gflop / peak_gflops, 3),
            "peak_rss_mb": round(peak_rss_mb())}


@torch.inference_mode()
def model_only(model, size: int, repeats: int, peak_gflops: float,
               onnx_paths: dict | None = None) -> list[dict]:
    """torch fp32 / bf16 channels-last on float input, and each ONNX graph on uint8 input
    (its normalisation is inside the graph); random pixels, the speed does not depend on them."""
    import onnxruntime as ort
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    gflop = counter.get_total_flops() / 1e9
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    rows = []
    for name, bf16 in (("torch fp32 channels-last", False), ("torch bf16 channels-last", True)):
        def run(n, bf16=bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(x[:n])
        rows.append(_model_row(name, run, repeats, gflop, peak_gflops))
    u8 = np.random.default_rng(0).integers(0, 256, (32, 1, size, size), dtype=np.uint8)
    for name, path in (onnx_paths or {}).items():
        ort.disable_telemetry_events()  # as in inference/onnx.open_session
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rows.append(_model_row(name, lambda n, s=session: s.run(None, {INPUT: u8[:n]}),
                               repeats, gflop, peak_gflops))
    return rows


def training_steps(model_name: str, size: int, steps: int) -> list[dict]:
    rows = []
    for name, bf16 in (("fp32 channels-last", False), ("bf16 channels-last", True)):
        torch.manual_seed(0)
        model = create_model(model_name, pretrained=False).train()
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (32,)).float()

        def step(model=model, opt=opt, x=x, y=y, bf16=bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    model(x)[:, 0].float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        s = median_time(step, steps)
        rows.append({"training": name, "batch": 32, "images_per_s": round(32 / s, 1),
                     "peak_rss_mb": round(peak_rss_mb())})
    return rows


def fidelity(model, ckpt, onnx_paths: dict, data_dir: Path) -> list[dict]:
    """Every test image: max |probability difference| vs fp32 torch, label flips at the
    stored threshold and AUROC, for each fast form. Reporting only; nothing is chosen on it."""
    records = select(scan(data_dir), "test", 0.1, 0)
    images, ok, _ = load_many([r.path for r in records], ckpt.preprocessing.input_size,
                              ckpt.preprocessing.interpolation,
                              storage_quality=ckpt.preprocessing.storage_quality)
    y = np.array([records[i].target for i in ok])
    ref = predict_arrays(model, ckpt, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forms = {"torch bf16": predict_arrays(model, ckpt, images)}
    for name, path in onnx_paths.items():
        forms[name] = probabilities_from_logits(onnx_logits(path, images), ckpt)
    rows = [{"form": "torch fp32 (reference)", "n": len(y), "auroc": round(auroc(y, ref), 4),
             "max_abs_prob_diff": 0.0, "label_flips": 0}]
    t = ckpt.threshold
    for name, p in forms.items():
        rows.append({"form": name, "n": len(y), "auroc": round(auroc(y, p), 4),
                     "max_abs_prob_diff": float(f"{np.abs(p - ref).max():.2e}"),
                     "label_flips": int(((p >= t) != (ref >= t)).sum())})
    return rows


def run(opts: BenchOptions) -> dict:
    """All figures in one dict (see `format_tables`)."""
    info = machine()
    model, ckpt = checkpoint.load(None)
    originals = expand_inputs([str(opts.data_dir.parent / "originals")])
    test = expand_inputs([str(opts.data_dir / "test")])
    if opts.quick:
        originals, test = originals[:24], test[::8]  # enough that start-up costs don't dominate
    sets = {"full-size originals": originals, "test split 224 px": test}
    tmp = Path(tempfile.mkdtemp(prefix="pneumoscan-bench-"))
    progress.step("bench: exporting the shipped model to ONNX")
    export_from_data(None, tmp / "model.onnx", opts.data_dir, int8=not opts.quick)
    onnx_paths = {"onnx fp32": tmp / "model.onnx"}
    if not opts.quick:
        onnx_paths["onnx int8"] = tmp / "model.int8.onnx"

    naive = NaivePipeline(*checkpoint.load(None))
    default = make_predictor(None, "auto", originals)  # ONNX fp32 (cached export) + OOD gate
    pipelines = {"(a) naive: full decode, fp32 NCHW, batch 1": naive.predict,
                 f"(b) pneumoscan default ({default.runtime}, OOD gate)": default.predict,
                 "(b') --runtime torch (fp32 channels-last)": torch_predictor(model, ckpt).predict,
                 "(b'') --runtime torch --bf16": torch_predictor(*checkpoint.load(None),
                                                                 bf16=True).predict}
    for name, path in onnx_paths.items():
        pipelines[f"({'c' if 'fp32' in name else 'd'}) {name}"] = \
            Predictor(*OnnxBackend.from_file(path)).predict
    repeats = 1 if opts.quick else opts.repeats
    out = {"machine": info, "repeats": repeats,
           "end_to_end": end_to_end(pipelines, sets, repeats)}
    progress.step("bench: model-only throughput")
    out["model_only"] = model_only(torch_predictor(model, ckpt).model,
                                   ckpt.preprocessing.input_size, repeats,
                                   info["peak_fp32_gflops"], onnx_paths)
    if not opts.quick:
        progress.step("bench: training steps")
        out["training"] = training_steps(ckpt.model_name, ckpt.preprocessing.input_size, 3)
        progress.step("bench: fidelity of each form on the test split")
        out["fidelity_test_split"] = fidelity(model, ckpt, onnx_paths, opts.data_dir)
    return out


def format_tables(r: dict) -> str:
    m = r["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores at {m['clock_ghz']} GHz; "
             f"torch {m['torch']} ({m['torch_threads']} threads), onnxruntime "
             f"{m['onnxruntime']}, timm {m['timm']}, Pillow {m['pillow']}; median of "
             f"{r['repeats']} after a warm-up",
             f"fp32 peak {m['peak_fp32_gflops']} GFLOP/s = {m['peak_formula']}", ""]
    for key in ("end_to_end", "model_only", "training", "fidelity_test_split"):
        if key in r:
            rows = [{k: str(v) for k, v in row.items()} for row in r[key]]
            lines += [key, table(rows, list(rows[0])), ""]
    return "\n".join(lines)

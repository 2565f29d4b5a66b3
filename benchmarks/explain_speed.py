"""Print what an explanation costs on this machine (figures, not a pass/fail test).

    python benchmarks/explain_speed.py [--repeats 5] [--images 8] [--threads N]

Per image, batch of one, shipped model, decoded 224 px test images already in memory:
  predict    the prediction alone (predict_arrays: one forward pass)
  gradcam    Grad-CAM alone (captum LayerGradCam: forward + backward to the target layer)
  occlusion  occlusion sensitivity with the default settings (window 32, stride 16)
Grad-CAM's cost beyond the prediction is the gradcam figure: explain runs it beside the
prediction's own forward pass. Median over repeats of the mean over images, after a warm-up,
as wall clock and as process CPU time (the machine's load average is printed: on a shared
machine wall clock measures the neighbours too).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from pneumoscan.data import default_data_dir
from pneumoscan.data.decode import load_many
from pneumoscan.explain.explainer import Explainer
from pneumoscan.explain.gradients import gradcam, occlusion
from pneumoscan.explain.spec import OcclusionSettings
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.inference.torch_backend import predict_arrays


def per_image(fn, images, repeats: int) -> tuple[float, float]:
    """Median seconds per image: wall clock, and this process's CPU time (which other jobs
    on a shared machine inflate much less)."""
    fn(images[:1])  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for i in range(len(images)):
            fn(images[i:i + 1])
        wall.append((time.perf_counter() - t) / len(images))
        cpu.append((time.process_time() - c) / len(images))
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--occlusion-images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); on a machine shared "
                             "with other jobs, 1 thread avoids OpenMP threads waiting on "
                             "each other, which can make batch-1 passes 100x slower")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    e = Explainer.from_checkpoint()
    model, ckpt = e.model, e.ckpt
    load = f"{os.getloadavg()[0]:.1f}"
    paths = expand_inputs([str(default_data_dir() / "test")])[::40][:args.images]
    images, _, _ = load_many(paths, ckpt.preprocessing.input_size)
    settings = OcclusionSettings()
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(images)} test images, batch 1, "
          f"median of {args.repeats} runs after a warm-up")
    pred = per_image(lambda x: predict_arrays(model, ckpt, x), images, args.repeats)
    cam = per_image(lambda x: gradcam(model, ckpt, x), images, args.repeats)
    occ = per_image(lambda x: occlusion(model, ckpt, x, settings=settings),
                    images[:args.occlusion_images], max(1, args.repeats // 2))
    passes = settings.forward_passes(ckpt.preprocessing.input_size)
    print(f"load average before: {load}; after: {os.getloadavg()[0]:.1f}")
    print(f"{'ms per image':47s} {'wall':>9s} {'CPU time':>9s}")
    for name, (wall, cpu_time) in (
            ("predict (1 forward)", pred), ("Grad-CAM beyond the prediction", cam),
            (f"occlusion ({passes} forwards, window 32, stride 16)", occ)):
        print(f"{name:47s} {wall * 1000:9.1f} {cpu_time * 1000:9.1f}")


if __name__ == "__main__":
    main()

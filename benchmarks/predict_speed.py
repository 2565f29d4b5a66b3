"""Print end-to-end prediction throughput of the shipped model (figures, not a pass/fail test).

    python benchmarks/predict_speed.py [--repeats 3]

Runs Predictor.predict (decode + resize + fp32 channels-last inference, batch 32) over the
16 full-size originals in examples/ and over the 624 test images of $PNEUMOSCAN_DATA, after
one warm-up pass, and prints the median of the repeats with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pneumoscan.data import default_data_dir
from pneumoscan.predict import Predictor, expand_inputs

REPO = Path(__file__).resolve().parents[1]


def timed(predictor: Predictor, paths: list[str], repeats: int) -> float:
    predictor.predict(paths[:32])  # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.predict(paths)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint()
    sets = {"examples/ (16 full-size originals)": expand_inputs([str(REPO / "examples")])}
    test = default_data_dir() / "test"
    if test.is_dir():
        sets["test split (624 x 224 px)"] = expand_inputs([str(test)])
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} after warm-up")
    print(f"{'images':40s} {'n':>5s} {'seconds':>8s} {'images/s':>9s}")
    for name, paths in sets.items():
        s = timed(predictor, paths, args.repeats)
        print(f"{name:40s} {len(paths):5d} {s:8.2f} {len(paths) / s:9.1f}")


if __name__ == "__main__":
    main()

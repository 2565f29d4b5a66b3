"""Where the default predict path's time goes besides the network: one batch of 32 through
ONNX Runtime, alone and followed by the OOD gate's scoring with BLAS free to use every core
or limited to one thread. Figures, not a test.

    PYTHONPATH=src PNEUMOSCAN_DATA=/work/shared/data/chest_xray \\
        python benchmarks/predict_overheads.py

Found with it (2-core CPU, 2026-11-26): OpenBLAS's worker threads keep spinning after the
gate's two small matrix products and slowed the next batch's forward pass from ~155 to ~195 ms;
ood.scores now runs them on one BLAS thread (~159 ms).
"""

from __future__ import annotations

import statistics
import time

from threadpoolctl import threadpool_limits

from pneumoscan.data import default_data_dir
from pneumoscan.data.decode import load_many
from pneumoscan.inference.export import onnx_outputs
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.inference.runtime import make_predictor
from pneumoscan.training import ood


def per_batch_ms(session, images, after, runs: int = 10) -> float:
    onnx_outputs(session, images, 32, features=True)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        logits, feats = onnx_outputs(session, images, 32, features=True)
        after(feats)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    paths = expand_inputs([str(default_data_dir() / "test")])[:32]
    predictor = make_predictor(None, "onnx", paths)
    prep, stats = predictor.ckpt.preprocessing, predictor.ckpt.ood_stats
    images = load_many(paths, prep.input_size, prep.interpolation)[0]

    def gate_all_threads(feats):
        with threadpool_limits(None, user_api="blas"):  # undo ood.scores' own limit
            get = {k: v for k, v in stats.items()}
            z = (feats - get["mean"]) @ get["axes"].T
            return z @ get["precision"]

    rows = {"forward pass only": lambda f: None,
            "+ gate, BLAS on all cores": gate_all_threads,
            "+ ood.scores (one BLAS thread)": lambda f: ood.scores(f, stats)}
    for name, after in rows.items():
        print(f"{name:34s} {per_batch_ms(predictor.session, images, after):7.1f} ms / batch of 32")


if __name__ == "__main__":
    main()

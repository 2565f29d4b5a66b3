"""How the out-of-distribution gate of a model behaves: false rejects on real X-rays (test split,
full-size originals) and reject rates on clearly foreign images built on the fly.

    PYTHONPATH=src PNEUMOSCAN_DATA=/work/shared/data/chest_xray \\
        python benchmarks/ood_check.py [--model RUN]

The foreign images go through the same decode path as `pneumoscan predict` (written as PNG
files, then predicted): scikit-image sample photos (colour ones are decoded to gray like any
input) and four crops of each, uniform and Gaussian noise, blank images. Inverted and 90-degree
rotated X-rays are built from the test split's decoded arrays.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.data import default_data_dir, scan, select
from pneumoscan.data.decode import load_many
from pneumoscan.inference.predictor import Predictor
from pneumoscan.inference.runtime import load_torch

PHOTOS = ["astronaut", "brick", "camera", "cell", "chelsea", "chessboard", "clock", "coffee",
          "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
          "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
          "text"]


def photos() -> dict[str, np.ndarray]:
    """scikit-image's bundled sample images (those present offline), uint8, plus 4 crops each."""
    import skimage.data
    from skimage.util import img_as_ubyte

    out = {}
    for name in PHOTOS:
        try:
            img = img_as_ubyte(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 (an image that needs a download is skipped)
            continue
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out[name] = img
        h, w = img.shape[:2]
        for k, (y, x) in enumerate(((0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2))):
            out[f"{name}-crop{k}"] = img[y:y + h // 2, x:x + w // 2]
    return out


def synthetic(n: int = 10, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    noise = {f"uniform{i}": rng.integers(0, 256, (512, 512), dtype=np.uint8) for i in range(n)}
    noise |= {f"gauss{i}": np.clip(rng.normal(128, 40, (512, 512)), 0, 255).astype(np.uint8)
              for i in range(n)}
    noise |= {f"colour{i}": rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
              for i in range(n)}
    blank = {f"blank{v}": np.full((512, 512), v, np.uint8) for v in (0, 32, 64, 128, 192, 255)}
    blank |= {"gradient": np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))}
    return {"noise": noise, "blank": blank}


def predict_images(predictor: Predictor, images: dict[str, np.ndarray]) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, img in images.items():
            paths.append(str(Path(tmp) / f"{name}.png"))
            Image.fromarray(img).save(paths[-1])
        return predictor.predict(paths)


def rate(flags) -> str:
    flags = list(flags)
    return f"{sum(flags)}/{len(flags)} = {np.mean(flags):.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="run folder (default: the shipped model)")
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    data = args.data or default_data_dir()
    predictor = load_torch(args.model)
    gate = predictor.ckpt.ood
    if gate is None:
        raise SystemExit("this model has no OOD gate: run 'pneumoscan fit-ood' first")
    print(f"gate: {gate['method']}, {gate['components']} components, threshold "
          f"{gate['threshold']:.2f} (target false reject {gate['target_false_reject']:.1%} "
          f"on {gate['n_val']} val images; val false reject {gate['val_false_reject']:.2%})")

    cfg = predictor.ckpt.config
    prep = predictor.ckpt.preprocessing
    test = select(scan(data), "test", cfg.get("val_fraction", 0.1), cfg.get("seed", 42))
    x_test = load_many([r.path for r in test], prep.input_size, prep.interpolation)[0]
    probs, s_test = predictor.scores(x_test)
    thr = gate["threshold"]
    print(f"false reject, test split:      {rate(s_test > thr)}  "
          f"(median score {np.median(s_test):.1f}, max {s_test.max():.1f})")
    originals = sorted(glob.glob(str(Path(data).parent / "originals" / "**" / "*.jpeg"),
                                 recursive=True))
    if originals:
        res = predictor.predict(originals)
        print(f"false reject, full-size originals: {rate(r.ood for r in res)}")

    groups = {"scikit-image photos (+crops)": photos(), **synthetic()}
    foreign = []
    for name, images in groups.items():
        res = predict_images(predictor, images)
        foreign += [r.ood for r in res]
        missed = [Path(r.path).stem for r in res if not r.ood]
        print(f"reject, {name}: {rate(r.ood for r in res)}"
              f"{'  missed: ' + ', '.join(missed) if missed else ''}")
    print(f"reject, all foreign images: {rate(foreign)}")

    p_inv, s_inv = predictor.scores(255 - x_test)
    p_rot, s_rot = predictor.scores(np.ascontiguousarray(np.rot90(x_test, axes=(1, 2))))
    kept = s_inv <= thr
    same = (p_inv >= predictor.threshold) == (probs >= predictor.threshold)
    print(f"flagged, inverted test X-rays: {rate(s_inv > thr)}; the unflagged ones keep "
          f"their upright label in {same[kept].mean() if kept.any() else float('nan'):.1%}")
    kept = s_rot <= thr
    same = (p_rot >= predictor.threshold) == (probs >= predictor.threshold)
    print(f"flagged, 90-degree rotated test X-rays: {rate(s_rot > thr)}; the unflagged ones "
          f"keep their upright label in {same[kept].mean() if kept.any() else float('nan'):.1%}")

    batch = x_test[:32]
    t_plain, t_gate = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        predictor.probabilities(batch)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        predictor.scores(batch)
        t_gate.append(time.perf_counter() - t0)
    print(f"cost, batch of 32 (median of 5): probabilities only "
          f"{statistics.median(t_plain) * 1000:.0f} ms, with OOD score "
          f"{statistics.median(t_gate) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

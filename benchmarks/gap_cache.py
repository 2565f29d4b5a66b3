"""Feature cache for the train-to-test gap studies (issue #9): one forward pass per network
and preprocessing variant over all 5,856 dataset images, kept in an .npz outside git.

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/gap_cache.py [--runs r1-seed0 ...]

Cached (by name; a name already in the cache is not recomputed):
  meta: path, split, label, patient of every image (data.scan order)
  images: (N, 224, 224) uint8, as transforms.load_gray decodes them
  imagenet_<variant>_<layer>: ImageNet EfficientNet-Lite0 features, globally averaged,
      of blocks.4 (112-d), blocks.5 (192-d) and bn2 (1280-d); variants raw, eq (per-image
      histogram equalisation), crop (central 80% resized back to 224: borders and corner
      markers gone)
  logit_<run>, feat_<run>: a trained model's logits and bn2 features (shipped = the
      packaged default model) on its carved val, val-official and test (NaN elsewhere)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pneumoscan.core.config import config_from_dict
from pneumoscan.core.preprocessing import Preprocessing
from pneumoscan.data import scan, split_train_val
from pneumoscan.data.decode import load_many
from pneumoscan.models import weights as checkpoint
from pneumoscan.models.registry import create_model
from pneumoscan.models.transforms import to_model_input
from pneumoscan.training import ood

CACHE = Path(os.environ.get("GAP_CACHE", Path.home() / ".cache" / "pneumoscan-gap"))
LAYERS = {"b4": lambda m: m.blocks[4], "b5": lambda m: m.blocks[5], "bn2": lambda m: m.bn2}
RUNS = Path("/work/main/runs")


def variant(images: np.ndarray, name: str) -> np.ndarray:
    if name == "raw":
        return images
    out = np.empty_like(images)
    for i, a in enumerate(images):
        img = Image.fromarray(a)
        if name == "eq":
            img = ImageOps.equalize(img)
        elif name == "crop":
            s = images.shape[1]
            m = round(s * 0.1)
            img = img.crop((m, m, s - m, s - m)).resize((s, s), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img)
    return out


@torch.inference_mode()
def layer_features(model, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    model.eval()
    store: dict[str, list] = {k: [] for k in LAYERS}
    hooks = [LAYERS[k](model).register_forward_hook(
        lambda _m, _i, y, k=k: store[k].append(y.float().mean(dim=(2, 3)).numpy()))
        for k in LAYERS]
    prep = Preprocessing()
    try:
        for i in range(0, len(images), batch):
            model(to_model_input(torch.from_numpy(images[i:i + batch]).unsqueeze(1), prep))
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in store.items()}


def load_cache() -> dict[str, np.ndarray]:
    path = CACHE / "gap.npz"
    return dict(np.load(path, allow_pickle=False)) if path.exists() else {}


def save_cache(cache: dict[str, np.ndarray]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "gap.tmp.npz"
    np.savez(tmp, **cache)
    tmp.replace(CACHE / "gap.npz")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[], help="run folders under /work/main/runs")
    ap.add_argument("--variants", nargs="*", default=["raw", "eq", "crop"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    cache = load_cache()
    if "images" not in cache:
        recs = scan(os.environ["PNEUMOSCAN_DATA"])
        images, ok, errors = load_many([r.path for r in recs], 224)
        assert not errors, errors
        cache["images"] = images
        for key in ("path", "split", "label", "patient"):
            cache[key] = np.array([getattr(r, key) for r in recs])
        save_cache(cache)
    images = cache["images"]
    for run in ["shipped", *args.runs]:
        if f"feat_{run}" in cache:
            continue
        model, ckpt = checkpoint.load(None if run == "shipped" else RUNS / run)
        # Only the images a trained model did not fit (its carved val, val-official, test):
        # the 2 shared cores cannot afford the rest. NaN elsewhere.
        cfg = config_from_dict(ckpt.config)
        recs = scan(os.environ["PNEUMOSCAN_DATA"])
        _, val = split_train_val(recs, cfg.val_fraction, cfg.seed)
        held = (cache["split"] != "train") | np.isin(cache["path"], [r.path for r in val])
        logits, feats = ood.logits_and_features(model, ckpt, images[held], 64)
        cache[f"logit_{run}"] = np.full(len(images), np.nan, np.float32)
        cache[f"logit_{run}"][held] = logits
        cache[f"feat_{run}"] = np.full((len(images), feats.shape[1]), np.nan, np.float32)
        cache[f"feat_{run}"][held] = feats
        cache[f"temp_{run}"] = np.array(ckpt.temperature)
        cache[f"thr_{run}"] = np.array(ckpt.threshold)
        save_cache(cache)
        print("cached", run, flush=True)
    for v in args.variants:
        if f"imagenet_{v}_bn2" in cache:
            continue
        feats = layer_features(create_model("efficientnet-lite0", pretrained=True),
                               variant(images, v))
        cache.update({f"imagenet_{v}_{k}": f for k, f in feats.items()})
        save_cache(cache)
        print("cached", v, flush=True)


if __name__ == "__main__":
    main()

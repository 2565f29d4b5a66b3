"""Acquisition-shift validation: does the answer survive how an X-ray was taken and stored?

Every image of a split (the carved val split for choosing; never test) is re-rendered by a
fixed family of acquisition changes (SHIFTS), written to an in-memory file and scored through
the user's path (decode, resize, model), as `pneumoscan predict` scores a file. The train
originals of the data's sibling `originals/` folder are scored from their full-size files and
from their 224 px copies. A cue-conflicting view scores the images that simple acquisition
statistics (fitted on the carved train split only) would get wrong. docs/experiments.md
defines the family and the decision rule that reads it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..core import decisions
from ..data import LABELS, load_records
from ..data.decode import load_gray
from ..evaluation.cues import cue_conflicting
from ..evaluation.metrics import auroc, binary_metrics
from ..inference.runtime import make_predictor
from .evaluate import split_images


@dataclass(frozen=True)
class Shift:
    family: str
    name: str
    params: dict
    render: Callable[[Image.Image], Image.Image]
    jpeg_quality: int | None = None  # stored as JPEG at this quality, else lossless PNG


def _crop(img: Image.Image, fx: float, fy: float) -> Image.Image:
    """Keep the central fx x fy of the image, squashed back to its size (as a copy is)."""
    w, h = img.size
    dx, dy = round(w * (1 - fx) / 2), round(h * (1 - fy) / 2)
    return img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BILINEAR)


def _pad(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    px, py = round(w * frac), round(h * frac)
    canvas = Image.new("L", (w + 2 * px, h + 2 * py), 0)
    canvas.paste(img, (px, py))
    return canvas.resize((w, h), Image.Resampling.BILINEAR)


def _resample(img: Image.Image, s: float) -> Image.Image:
    w, h = img.size
    small = img.resize((max(2, round(w * s)), max(2, round(h * s))), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.BILINEAR)


def _gamma(img: Image.Image, g: float) -> Image.Image:
    return img.point([round(255.0 * (i / 255.0) ** g) for i in range(256)])


def _contrast(img: Image.Image, c: float) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(a.mean() + c * (a - a.mean())), 0, 255).astype(np.uint8))


def _brightness(img: Image.Image, b: float) -> Image.Image:
    return img.point([min(255, max(0, round(i + 255 * b))) for i in range(256)])


def _blur(sigma: float) -> Callable[[Image.Image], Image.Image]:
    return lambda img: img.filter(ImageFilter.GaussianBlur(sigma))


def _same(img: Image.Image) -> Image.Image:
    return img


SHIFTS: tuple[Shift, ...] = (
    Shift("original", "smoothed", {"gaussian_sigma": 0.8}, _blur(0.8)),
    Shift("original", "jpeg95", {"jpeg_quality": 95}, _same, 95),
    Shift("aspect", "aspect_x0.8", {"keep_width": 0.8}, lambda i: _crop(i, 0.8, 1.0)),
    Shift("aspect", "aspect_x1.25", {"keep_height": 0.8}, lambda i: _crop(i, 1.0, 0.8)),
    Shift("framing", "zoom_in_6", {"crop_each_side": 0.06}, lambda i: _crop(i, 0.88, 0.88)),
    Shift("framing", "zoom_in_12", {"crop_each_side": 0.12}, lambda i: _crop(i, 0.76, 0.76)),
    Shift("framing", "zoom_out_8", {"black_pad_each_side": 0.08}, lambda i: _pad(i, 0.08)),
    Shift("resolution", "down_50", {"scale": 0.5}, lambda i: _resample(i, 0.5)),
    Shift("resolution", "down_30", {"scale": 0.3}, lambda i: _resample(i, 0.3)),
    Shift("resolution", "blur_1.5", {"gaussian_sigma": 1.5}, _blur(1.5)),
    Shift("exposure", "gamma_0.7", {"gamma": 0.7}, lambda i: _gamma(i, 0.7)),
    Shift("exposure", "gamma_1.4", {"gamma": 1.4}, lambda i: _gamma(i, 1.4)),
    Shift("exposure", "contrast_0.75", {"contrast": 0.75}, lambda i: _contrast(i, 0.75)),
    Shift("exposure", "brightness_+0.12", {"brightness": 0.12}, lambda i: _brightness(i, 0.12)),
    Shift("compression", "jpeg30", {"jpeg_quality": 30}, _same, 30),
    Shift("compression", "jpeg50", {"jpeg_quality": 50}, _same, 50),
    Shift("compression", "jpeg70", {"jpeg_quality": 70}, _same, 70),
)


def render_file(gray: np.ndarray, shift: Shift) -> io.BytesIO:
    """(H, W) uint8 -> the shifted image as an encoded file in memory."""
    img = shift.render(Image.fromarray(gray))
    buf = io.BytesIO()
    if shift.jpeg_quality is None:
        img.save(buf, "PNG")
    else:
        img.save(buf, "JPEG", quality=shift.jpeg_quality)
    buf.seek(0)
    return buf


def decode_shifted(images: np.ndarray, shift: Shift, prep) -> np.ndarray:
    """Decoded (N, H, W) images -> each rendered by `shift`, stored as a file and decoded
    again as the model's preprocessing `prep` decodes a user's file."""
    return np.stack([load_gray(render_file(g, shift), prep.input_size, prep.interpolation,
                               name=shift.name, storage_quality=prep.storage_quality)
                     for g in images])


def shift_named(name: str) -> Shift:
    """The change of SHIFTS called `name` (e.g. "zoom_in_12")."""
    for s in SHIFTS:
        if s.name == name:
            return s
    raise KeyError(f"no acquisition change named {name!r}; known: "
                   f"{', '.join(s.name for s in SHIFTS)}")


def _row(y: np.ndarray, p: np.ndarray, p_clean: np.ndarray, threshold: float) -> dict:
    m = binary_metrics(y, p, threshold)
    d = np.abs(p - p_clean)
    return {"n": int(len(y)), "auroc": auroc(y, p) if 0 < y.sum() < len(y) else None,
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "mean_abs_dp": float(d.mean()), "max_abs_dp": float(d.max()),
            "label_flips": int(((p >= threshold) != (p_clean >= threshold)).sum())}


def originals_agreement(predictor, data_dir: Path, originals_dir: Path,
                        splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Each original of `splits` scored from its full-size file and from its 224 px copy in
    the dataset: per split n, AUROC of the originals, mean/max |dp|, label flips, and rows."""
    import csv

    with open(originals_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for split in splits:
        mine = [r for r in rows if r["split"] == split]
        pairs = [(originals_dir / r["path"], data_dir / r["path"], LABELS.index(r["label"]))
                 for r in mine if (data_dir / r["path"]).is_file()]
        if not pairs:
            continue
        res = predictor.predict([str(a) for a, _, _ in pairs] + [str(b) for _, b, _ in pairs])
        k = len(pairs)
        p_orig = np.array([r.probability for r in res[:k]], dtype=float)
        p_copy = np.array([r.probability for r in res[k:]], dtype=float)
        y = np.array([t for _, _, t in pairs])
        row = _row(y, p_orig, p_copy, predictor.threshold)
        row["auroc_copies"] = auroc(y, p_copy) if 0 < y.sum() < len(y) else None
        row["images"] = [{"name": a.name, "label": LABELS[t], "p_original": round(po, 4),
                          "p_copy": round(pc, 4)}
                         for (a, _, t), po, pc in zip(pairs, p_orig, p_copy)]
        if not predictor.ckpt.binary:  # K classes: every class and the etiology agree?
            c_orig = np.array([list(r.class_probabilities.values()) for r in res[:k]])
            c_copy = np.array([list(r.class_probabilities.values()) for r in res[k:]])
            row["max_abs_dp_classes"] = float(np.abs(c_orig - c_copy).max())
            # the likelier non-NORMAL class of every image, whatever its label (a
            # Prediction's etiology is only given with a PNEUMONIA label)
            e_orig = [decisions.etiology_of(c, predictor.ckpt) for c in c_orig]
            e_copy = [decisions.etiology_of(c, predictor.ckpt) for c in c_copy]
            row["etiology_flips"] = sum(a != b for a, b in zip(e_orig, e_copy))
            for item, a, b in zip(row["images"], e_orig, e_copy):
                item["etiology_original"], item["etiology_copy"] = a, b
        out[split] = row
    return out


def find_originals(data_dir: Path) -> Path | None:
    """The `originals/` folder beside the dataset folder (as ../shared/data lays it out)."""
    cand = Path(data_dir).resolve().parent / "originals"
    return cand if (cand / "manifest.csv").is_file() else None


def shift_validation(model_path, data_dir: str | Path, split: str = "val",
                     originals_dir: str | Path | None = None, cues: bool = True) -> dict:
    """Score `split` clean and under every change of SHIFTS; returns per-change rows, the
    worst change, the originals' agreement with their copies and (cues) the cue-conflicting
    view. Refuses the test split: this is a selection instrument."""
    if split == "test":
        raise ValueError("the shift validation chooses recipes: run it on val, never on test")
    data_dir = Path(data_dir)
    all_records = load_records(data_dir)
    predictor = make_predictor(model_path, runtime="auto",
                               paths=[str(r.path) for r in all_records[:64]])
    ckpt = predictor.ckpt
    records, images, ok, errors = split_images(all_records, ckpt, split, data_dir)
    y = np.array([records[i].target for i in ok])
    prep, thr = ckpt.preprocessing, predictor.threshold
    p_clean = predictor.probabilities(images)
    clean = _row(y, p_clean, p_clean, thr)
    changes = []
    for s in SHIFTS:
        p = predictor.probabilities(decode_shifted(images, s, prep))
        changes.append({"family": s.family, "change": s.name, "params": s.params,
                        **_row(y, p, p_clean, thr)})
    worst = min(changes, key=lambda r: r["auroc"])
    result = {"split": split, "model": str(model_path or "shipped"), "threshold": thr,
              "clean": clean, "changes": changes,
              "worst": {"change": worst["change"], "auroc": worst["auroc"],
                        "auroc_drop": clean["auroc"] - worst["auroc"]},
              "skipped": list(errors.values())}
    originals_dir = Path(originals_dir) if originals_dir else find_originals(data_dir)
    if originals_dir is not None:
        result["originals"] = originals_agreement(predictor, data_dir, originals_dir)
    if cues:
        result["cues"] = cue_conflicting(predictor, all_records, ckpt, records, ok, images,
                                         y, p_clean)
    return result

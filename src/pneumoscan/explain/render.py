"""The PNG overlays `explain` and `predict --explain` write, and the annotated overlay the
DICOM Secondary Captures carry (Pillow; no matplotlib in the inference install)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .cam import heatmap_rgba
from .spec import Explanation

_TITLES = {"gradcam": "Grad-CAM", "occlusion": "occlusion sensitivity"}
PNG_SIDE = 600  # long side of an explanation PNG's X-ray in pixels


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotated(gray: np.ndarray, heatmap: np.ndarray | None, lines: list[str], side: int,
              highlight: str | None = None, scale_bar: bool = False) -> np.ndarray:
    """(H, W) uint8 X-ray and (H, W) map in [0, 1] (or None) -> (h, w, 3) uint8 RGB: the
    X-ray scaled to `side` on its long side, the map blended over it (turbo, opacity growing
    with the value: cam.heatmap_rgba, as the web page draws it), and a black band below with
    `lines` of text (`highlight` in yellow) and, with `scale_bar`, the colour scale. Pillow
    only: the explanation PNGs (explain) and the DICOM Secondary Captures share it."""
    height, width = gray.shape
    scale = side / max(height, width)
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    base = Image.fromarray(gray, "L").convert("RGBA")
    if heatmap is not None:
        base = Image.alpha_composite(base, Image.fromarray(heatmap_rgba(heatmap), "RGBA"))
    image = base.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    font_px = max(12, size[0] // 48)
    step = round(font_px * 1.35)
    bar = 2 * step if scale_bar else 0
    band = step * len(lines) + font_px + bar
    out = Image.new("RGB", (size[0], size[1] + band), "black")
    out.paste(image, (0, 0))
    draw, font = ImageDraw.Draw(out), _font(font_px)
    for i, line in enumerate(lines):
        draw.text((font_px // 2, size[1] + font_px // 2 + i * step), line,
                  fill=(255, 255, 0) if line == highlight else "white", font=font)
    if scale_bar:
        y0, x0 = size[1] + font_px // 2 + len(lines) * step, font_px // 2
        length = max(2, size[0] // 3)
        ramp = heatmap_rgba(np.tile(np.linspace(0.0, 1.0, length), (font_px // 2, 1)))
        strip = Image.alpha_composite(Image.new("RGBA", (length, font_px // 2), "black"),
                                      Image.fromarray(ramp, "RGBA")).convert("RGB")
        out.paste(strip, (x0 + 4 * font_px, y0 + font_px // 4))
        draw.text((x0, y0), "low", fill="white", font=font)
        draw.text((x0 + 5 * font_px + length, y0), "high relative importance", fill="white",
                  font=font)
    return np.asarray(out, dtype=np.uint8)


def render(e: Explanation, threshold: float, out: Path, side: int = PNG_SIDE) -> None:
    """The gray X-ray with the heatmap over it, the result written below it. The heatmap's
    opacity grows with its value (up to 0.55), so unimportant regions show the plain X-ray."""
    label = e.label or "no label (out of distribution)"
    lines = [f"{label}: p(pneumonia) = {e.probability:.3f} (threshold {threshold:.3f})"]
    if e.etiology is not None:
        lines.append("likelier etiology " + e.etiology + ": " + ", ".join(
            f"{k} {v:.3f}" for k, v in e.class_probabilities.items()))
    lines += [*e.warnings, f"{_TITLES[e.method]} - {Path(e.path).name}"]
    rgb = annotated(e.image, e.heatmap, lines, side, scale_bar=True)
    Image.fromarray(rgb, "RGB").save(out, format="PNG", optimize=True)


def save(e: Explanation, out_dir: str | Path, threshold: float, save_npy: bool = False,
         taken: set[str] | None = None) -> Path:
    """Write <stem>_<method>.png (and .npy, the float32 map on the original geometry) into
    out_dir; returns the PNG path. `taken` holds names already written this run, so two
    inputs with the same file name do not overwrite each other."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem, n = f"{Path(e.path).stem}_{e.method}", 1
    name = stem
    while taken is not None and name in taken:
        n += 1
        name = f"{stem}_{n}"
    if taken is not None:
        taken.add(name)
    png = out_dir / f"{name}.png"
    render(e, threshold, png)
    if save_npy:
        np.save(out_dir / f"{name}.npy", e.heatmap.astype(np.float32))
    return png

"""The PNG overlays `explain` and `predict --explain` write (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .spec import Explanation

_TITLES = {"gradcam": "Grad-CAM", "occlusion": "occlusion sensitivity"}


def render(e: Explanation, threshold: float, out: Path, width_in: float = 5.0,
           dpi: int = 100) -> None:
    """The gray X-ray with the heatmap over it. The heatmap's opacity grows with its value
    (up to 0.55), so unimportant regions show the plain X-ray."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    height, width = e.image.shape
    cmap = colormaps["turbo"]
    fig = Figure(figsize=(width_in, width_in * height / width * 0.85 + 0.7))
    ax = fig.add_subplot()
    ax.imshow(e.image, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    ax.imshow(e.heatmap, cmap=cmap, vmin=0, vmax=1, alpha=0.55 * e.heatmap,
              interpolation="antialiased")
    ax.set_axis_off()
    classes = ("" if e.etiology is None else "likelier etiology " + e.etiology + ": " + ", ".join(
        f"{k} {v:.3f}" for k, v in e.class_probabilities.items()) + "\n")
    ax.set_title(f"{e.label}: p(pneumonia) = {e.probability:.3f} (threshold {threshold:.3f})\n"
                 f"{classes}{_TITLES[e.method]} · {Path(e.path).name}", fontsize=9)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("relative importance", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")


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

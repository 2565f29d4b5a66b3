"""Matplotlib figures written to PNG files (headless backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(history: list[dict], out: Path) -> None:
    """Loss, accuracy and AUROC per epoch, train vs validation."""
    epochs = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, ("loss", "acc", "auroc")):
        for stage, style in (("train", "-o"), ("val", "-s")):
            ys = [h.get(f"{stage}_{metric}", float("nan")) for h in history]
            ax.plot(epochs, ys, style, label=stage)
        ax.set_title({"loss": "loss", "acc": "accuracy (p >= 0.5)", "auroc": "AUROC"}[metric])
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

"""Matplotlib figures written to PNG files (headless backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(history: list[dict], out: Path) -> None:
    """Loss, accuracy and AUROC per epoch, train vs validation."""
    epochs = [h["epoch"] for h in history]  # counted from 1
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


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def roc_pr_curves(y_true, y_prob, points: list[dict], out_roc: Path, out_pr: Path) -> None:
    """ROC and precision-recall curves of one split, with operating points marked on both.

    points: rows of metrics.operating_points (threshold, sensitivity, specificity, name).
    """
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y_true, y_prob)
    prec, rec, _ = precision_recall_curve(y_true, y_prob)
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    for out, xs, ys, xlabel, ylabel in ((out_roc, fpr, tpr, "1 - specificity", "sensitivity"),
                                        (out_pr, rec, prec, "sensitivity (recall)",
                                         "PPV (precision)")):
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        ax.plot(xs, ys, lw=1.8, color="tab:blue")
        for k, pt in enumerate(points):
            pred = y_prob >= pt["threshold"]
            ppv = (pred & (y_true == 1)).sum() / max(pred.sum(), 1)
            x, y = ((1 - pt["specificity"], pt["sensitivity"]) if out is out_roc
                    else (pt["sensitivity"], ppv))
            ax.plot(x, y, "*" if pt["stored"] else "o", ms=13 if pt["stored"] else 7,
                    color="black" if pt["stored"] else f"C{k + 1}",
                    label=f"{pt['name']} (t={pt['threshold']:.3f})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if out is out_roc else "lower left")
        _save(fig, out)


def reliability(bins_before: list[dict], bins_after: list[dict], ece_before: float,
                ece_after: float, temperature: float, out: Path) -> None:
    """Reliability diagrams (observed pneumonia rate vs mean probability) before/after T."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, bins, title in ((axes[0], bins_before, f"before (T = 1), ECE {ece_before:.3f}"),
                            (axes[1], bins_after,
                             f"after (T = {temperature:.3f}), ECE {ece_after:.3f}")):
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        ax.bar(centres, [b["observed"] for b in bins], width=1 / 15 * 0.9, alpha=0.6,
               color="tab:blue", label="observed rate")
        ax.plot([b["mean_prob"] for b in bins], [b["observed"] for b in bins], "o",
                color="tab:red", label="observed rate at the bin's mean probability")
        for c, b in zip(centres, bins):
            ax.text(c, min(b["observed"] + 0.03, 0.97), str(b["count"]), ha="center", fontsize=6)
        ax.set_title(title)
        ax.set_xlabel("predicted pneumonia probability")
        ax.set_ylabel("observed pneumonia rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="upper left")
    _save(fig, out)


def confusion(tp: int, fp: int, tn: int, fn: int, out: Path) -> None:
    """2x2 confusion matrix at the stored threshold, rows = truth."""
    import numpy as np

    m = np.array([[tn, fp], [fn, tp]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=16,
                color="white" if v > m.max() / 2 else "black")
    ax.set_xticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    _save(fig, out)


def gallery(items: list[tuple], out: Path, columns: int = 6) -> None:
    """A grid of X-rays; items are (uint8 gray image, title, ok) with ok colouring the title."""
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.35 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, title, ok) in zip(axes.flat, items):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7, color="darkgreen" if ok else "darkred")
    _save(fig, out)

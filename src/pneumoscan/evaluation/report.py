"""The evaluation report: one self-contained report.html, metrics.json and the PNGs.

Everything is computed at the checkpoint's stored threshold and temperature. Operating
points (and, for a checkpoint without a temperature, the display-only temperature) are
chosen on the carved `val` split; the evaluated split is only ever scored.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..core.config import config_from_dict
from ..core.decisions import class_probabilities, probabilities_from_logits
from ..data import DatasetNotFound, Record, load_records
from ..data.decode import load_gray
from ..data.runs import split_of_run
from ..models import weights as checkpoint
from . import plots
from .calibration import score_records, temperature_of
from .metrics import (
    bootstrap_ci,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_multiclass,
    headline_metrics,
    mean_std,
    multiclass_bootstrap_ci,
    multiclass_metrics,
    operating_points,
    reliability_bins,
    require_both_classes,
    wilson_interval,
)
from .report_html import render

SHIPPED_HISTORY = Path(__file__).resolve().parents[3] / "docs" / "shipped-model" / "history.csv"
MAX_FN_SHOWN, FP_SHOWN, SAMPLES_SHOWN = 60, 12, 12


@dataclass
class Scored:
    """One split scored by one model: kept records, 0/1 pneumonia targets, raw logits ((N,)
    binary, (N, K) K-class), pneumonia probabilities, class indices and (N, K) class
    probabilities in ckpt.labels order (for a binary model classes == y)."""

    records: list[Record]
    y: np.ndarray
    z: np.ndarray
    p: np.ndarray
    skipped: list[str]
    classes: np.ndarray
    class_p: np.ndarray


def _at_temperature(ckpt, t: float):
    """The checkpoint as if its temperature were t (display only; nothing is stored)."""
    return replace(ckpt, extra={**ckpt.extra, "temperature": t})


def _score(model, ckpt, records: list[Record], name: str) -> Scored:
    kept, classes, z, skipped = score_records(model, ckpt, records)
    y = np.array([r.target for r in kept], dtype=int)  # NORMAL 0 / PNEUMONIA 1
    require_both_classes(y, f"split '{name}'")
    return Scored(kept, y, z, probabilities_from_logits(z, ckpt), skipped, classes,
                  class_probabilities(z, ckpt))


def manifest_sha256(records: list[Record], root: Path) -> str:
    """A hash of every image's relative path, folder split, label and content hash."""
    root = root.resolve()  # records read through a relative data path are relative too
    lines = sorted(f"{Path(r.path).resolve().relative_to(root)},{r.split},{r.label},{r.sha256}"
                   for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _shown(path: Path) -> str:
    """A path relative to the working directory where it lies below it (portable reports)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def provenance(ckpt, folder: Path, data_dir: Path, records: list[Record], sizes: dict,
               seed: int) -> dict:
    cpu = platform.processor() or platform.machine()
    return {
        "model": _shown(folder), "model_name": ckpt.model_name,
        "weights_sha256": checkpoint.file_sha256(folder / checkpoint.WEIGHTS),
        "model_json_sha256": checkpoint.file_sha256(folder / checkpoint.META),
        "trained_at_git_sha": ckpt.extra.get("git_sha"), "threshold": ckpt.threshold,
        "threshold_rule": ckpt.extra.get("threshold_rule"),
        "temperature": temperature_of(ckpt),
        "data_dir": str(data_dir.resolve()),
        "manifest_sha256": manifest_sha256(records, data_dir.resolve()),
        "split_sizes": sizes, "split_seed": config_from_dict(ckpt.config).data_seed,
        "val_fraction": config_from_dict(ckpt.config).val_fraction, "bootstrap_seed": seed,
        "package_version": __version__, **checkpoint.git_state(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}; {platform.platform()}; {cpu}; {os.cpu_count()} CPUs; "
                   f"torch {torch.__version__}",
    }


def _history(folder: Path) -> list[dict] | None:
    path = folder / "history.csv"
    if not path.is_file() and folder == checkpoint.default_model_dir().resolve():
        path = SHIPPED_HISTORY  # the shipped weights' run history lives in docs/
    if not path.is_file():
        return None
    with open(path) as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def _miss_rates(s: Scored, threshold: float) -> dict:
    """False-negative rate per pneumonia etiology (bacteria / virus), with Wilson intervals."""
    out = {}
    for etiology in sorted({r.etiology for r, y in zip(s.records, s.y) if y == 1}):
        sel = np.array([r.etiology == etiology and y == 1 for r, y in zip(s.records, s.y)])
        n, missed = int(sel.sum()), int((s.p[sel] < threshold).sum())
        low, high = wilson_interval(missed, n)
        out[etiology] = {"n": n, "missed": missed, "miss_rate": missed / n, "low": low,
                         "high": high}
    return out


def _in_data(path: str, data_dir: Path) -> str:
    """A path relative to the data folder where it lies below it (portable metrics.json)."""
    try:
        return str(Path(path).resolve().relative_to(data_dir.resolve()))
    except ValueError:  # a manifest entry elsewhere
        return str(path)


def _errors(s: Scored, threshold: float, seed: int, data_dir: Path) -> dict:
    pred = s.p >= threshold
    fn = np.flatnonzero((s.y == 1) & ~pred)
    fn = fn[np.argsort(s.p[fn], kind="stable")]  # most confident misses first
    fp = np.flatnonzero((s.y == 0) & pred)
    fp = fp[np.argsort(-s.p[fp], kind="stable")]
    rng = np.random.default_rng(seed)
    samples = np.sort(rng.choice(len(s.y), size=min(SAMPLES_SHOWN, len(s.y)), replace=False))

    def rows(idx):
        return [{"path": _in_data(s.records[i].path, data_dir), "truth": s.records[i].label,
                 "etiology": s.records[i].etiology, "probability": float(s.p[i])} for i in idx]

    return {"false_negatives": rows(fn), "false_positives": rows(fp),
            "samples": rows(samples), "miss_rate_by_etiology": _miss_rates(s, threshold)}


def analyse(model_path, data_dir: str | Path, split: str, n_resamples: int = 2000,
            seed: int = 0, records: list[Record] | None = None):
    """Score `split` (and val) with one model -> (metrics dict, Scored eval, Scored val)."""
    data_dir = Path(data_dir)
    records = load_records(data_dir) if records is None else records
    model, ckpt = checkpoint.load(model_path)
    model = model.to(memory_format=torch.channels_last)
    folder = Path(ckpt.extra["path"]).resolve()
    splits = {name: split_of_run(ckpt.config, records, name)
              for name in ("train", "val", "val-official", "test")}
    if not splits.get(split):
        raise DatasetNotFound(f"split '{split}' of {data_dir} holds no images")
    ev = _score(model, ckpt, splits[split], split)
    val = ev if split == "val" else _score(model, ckpt, splits["val"], "val")
    thr, temp = ckpt.threshold, temperature_of(ckpt)

    headline = headline_metrics(ev.y, ev.p, thr)
    headline.update({"split": split, "model": _shown(folder), "skipped": ev.skipped})
    ci = bootstrap_ci(ev.y, ev.p, thr, np.array([r.patient for r in ev.records]),
                      n_resamples, seed)
    # Calibration: the stored temperature, or (display only, not stored) one fitted on val.
    fit = fit_temperature if ev.z.ndim == 1 else fit_temperature_multiclass
    shown_t = temp if temp != 1.0 else fit(val.classes, val.z)

    def probabilities(z, t):  # the pneumonia probability at temperature t
        return probabilities_from_logits(z, _at_temperature(ckpt, t))

    raw, scaled = probabilities(ev.z, 1.0), probabilities(ev.z, shown_t)
    calibration = {
        "temperature": shown_t, "stored_in_checkpoint": temp != 1.0, "fitted_on": "val",
        "n_bins": 15,
        "ece_before": expected_calibration_error(ev.y, raw),
        "ece_after": expected_calibration_error(ev.y, scaled),
        "val_ece_before": expected_calibration_error(val.y, probabilities(val.z, 1.0)),
        "val_ece_after": expected_calibration_error(val.y, probabilities(val.z, shown_t)),
        "bins_before": reliability_bins(ev.y, raw), "bins_after": reliability_bins(ev.y, scaled),
    }
    metrics = {
        "headline": headline, "ci": ci,
        "operating_points": operating_points(val.y, val.p, ev.y, ev.p, thr),
        "calibration": calibration, "errors": _errors(ev, thr, seed, data_dir),
        "history": _history(folder),
        "provenance": provenance(ckpt, folder, data_dir, records,
                                 {k: len(v) for k, v in splits.items()}, seed),
    }
    if not ckpt.binary:
        metrics["labels"] = ckpt.labels
        metrics["multiclass"] = _multiclass(ev, ckpt.labels, n_resamples, seed)
    return metrics, ev


def _multiclass(ev: Scored, labels: list[str], n_resamples: int, seed: int) -> dict:
    """A K-class model's argmax metrics (as `evaluate`) with their patient-bootstrap intervals
    (the same resamples as the headline's)."""
    m = multiclass_metrics(ev.classes, ev.class_p, labels)
    m["ci"] = multiclass_bootstrap_ci(ev.classes, ev.class_p, labels,
                                      np.array([r.patient for r in ev.records]), n_resamples,
                                      seed)
    return m


def write_figures(metrics: dict, ev: Scored, out: Path) -> dict:
    """Every PNG of one model's report into `out`; returns {figure name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    h, cal, err = metrics["headline"], metrics["calibration"], metrics["errors"]
    figs = {name: out / f"{name}.png" for name in
            ("roc", "pr", "reliability", "confusion", "samples", "false_negatives",
             "false_positives")}
    plots.roc_pr_curves(ev.y, ev.p, metrics["operating_points"], figs["roc"], figs["pr"])
    plots.reliability(cal["bins_before"], cal["bins_after"], cal["ece_before"],
                      cal["ece_after"], cal["temperature"], figs["reliability"])
    plots.confusion(h["tp"], h["fp"], h["tn"], h["fn"], figs["confusion"])
    thr = h["threshold"]
    data_dir = Path(metrics["provenance"]["data_dir"])  # error rows' paths are relative to it
    for name, rows in (("samples", err["samples"]),
                       ("false_negatives", err["false_negatives"][:MAX_FN_SHOWN]),
                       ("false_positives", err["false_positives"][:FP_SHOWN])):
        if not rows:
            figs.pop(name)
            continue
        items = []
        for r in rows:
            called = "PNEUMONIA" if r["probability"] >= thr else "NORMAL"
            image = load_gray(data_dir / r["path"], 160)
            items.append((image, f"{Path(r['path']).name[:30]}\ntruth "
                          f"{r['truth']}, p={r['probability']:.3f}", called == r["truth"]))
        plots.gallery(items, figs[name])
    if metrics["history"]:
        figs["training_curves"] = out / "training_curves.png"
        plots.training_curves(metrics["history"], figs["training_curves"])
    return figs


def write_report(model_paths: list, data_dir: str | Path, split: str, out_dir: str | Path,
                 n_resamples: int = 2000, seed: int = 0) -> dict:
    """Evaluate one or several models on `split` and write report.html + metrics.json + PNGs.

    Args:
        model_paths: run folders / model.json files (None = the shipped model); several
            models (e.g. seeds) also get their mean and standard deviation.
        n_resamples, seed: the patient bootstrap.

    Returns the dict written to metrics.json.

    Examples:
        >>> write_report([None], "data/chest_xray", "test", "reports/test")  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    records = load_records(data_dir)
    per_model, sections = [], []
    for k, path in enumerate(model_paths):
        metrics, ev = analyse(path, data_dir, split, n_resamples, seed, records)
        sub = out_dir if len(model_paths) == 1 else out_dir / f"model-{k + 1}"
        sections.append((metrics, write_figures(metrics, ev, sub)))
        per_model.append(metrics)
    result = per_model[0] if len(per_model) == 1 else {
        "models": per_model, "across_models": mean_std([m["headline"] for m in per_model])}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out_dir / "report.html").write_text(render(sections, result.get("across_models")))
    return result

"""Temperature scaling fitted on validation: logits, the fit, and rewriting model.json.

The temperature T divides the logit before the sigmoid. It is monotonic, so the stored
threshold is moved into the calibrated space with it and every label stays the same; only
the probabilities become honest. Nothing here ever reads the test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from ..core import progress
from ..core.decisions import class_probabilities, probabilities_from_logits
from ..core.decisions import scaled_sigmoid as probabilities
from ..data import class_index
from ..data.batches import load_many_shown
from ..data.runs import split_of_run
from ..inference.torch_backend import predict_logits
from ..models import weights as checkpoint
from .metrics import (
    binary_metrics,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_multiclass,
    map_threshold,
    multiclass_metrics,
    sigmoid,
    threshold_for_sensitivity,
)


def temperature_of(ckpt: checkpoint.Checkpoint) -> float:
    return ckpt.temperature  # 1 in older checkpoints


def score_records(model: nn.Module, ckpt: checkpoint.Checkpoint, records: list):
    """Decode and score records -> (kept records, targets, logits, skipped messages)."""
    prep = ckpt.preprocessing
    images, ok, errors = load_many_shown([r.path for r in records], prep.input_size,
                                         prep.interpolation, prep.storage_quality)
    kept = [records[i] for i in ok]
    targets = np.array([class_index(r, ckpt.labels) for r in kept], dtype=int)
    logits = progress.batched(lambda x: predict_logits(model, ckpt, x), images, "scoring")
    return kept, targets, logits, list(errors.values())


def calibrate_checkpoint(ckpt: checkpoint.Checkpoint, y_val: np.ndarray,
                         z_val: np.ndarray) -> dict:
    """Fit T on validation logits, store it and the mapped threshold in `ckpt` (in place).

    Returns a summary: temperature, thresholds before/after, val ECE before/after.
    y_val (N,) class indices; z_val (N,) binary or (N, K) class logits.
    """
    if np.ndim(z_val) == 2:
        return _calibrate_multiclass(ckpt, y_val, z_val)
    old_t, old_thr = temperature_of(ckpt), ckpt.threshold
    p_old = probabilities(z_val, old_t)
    new_t = fit_temperature(y_val, z_val)
    p_new = probabilities(z_val, new_t)
    thr = map_threshold(old_thr, new_t, old_t)
    # The stored threshold is normally one val image's float32 score; use that image's new
    # float32 score so float rounding cannot flip it (the two differ by ~1e-7).
    boundary = p_old >= old_thr
    if boundary.any() and abs(p_new[boundary].min() - thr) < 1e-5:
        thr = float(p_new[boundary].min())
    before, after = binary_metrics(y_val, p_old, old_thr), binary_metrics(y_val, p_new, thr)
    if any(before[k] != after[k] for k in ("tp", "fp", "tn", "fn")):
        raise RuntimeError("temperature scaling changed a validation label; threshold mapping "
                           f"is wrong (before {before}, after {after})")
    ckpt.threshold = thr
    ckpt.val_metrics = after
    ckpt.temperature = new_t
    summary = {"temperature": new_t, "previous_temperature": old_t, "threshold": thr,
               "previous_threshold": old_thr, "fitted_on": "val", "n_val": int(len(y_val)),
               "val_ece_before": expected_calibration_error(y_val, sigmoid(z_val)),
               "val_ece_after": expected_calibration_error(y_val, p_new)}
    ckpt.extra["calibration"] = {k: v for k, v in summary.items()
                                 if k not in ("temperature", "threshold")}
    return summary


def _calibrate_multiclass(ckpt: checkpoint.Checkpoint, y_val: np.ndarray,
                          z_val: np.ndarray) -> dict:
    """K classes: T of softmax(logits / T), then the threshold chosen again on the calibrated
    pneumonia probability 1 - P(NORMAL) by the training rule. Unlike the binary case T can
    reorder that probability across images, so the old threshold cannot be mapped."""
    old_t, old_thr = temperature_of(ckpt), ckpt.threshold
    normal = ckpt.labels.index("NORMAL")
    y_sick = (np.asarray(y_val) != normal).astype(int)
    p_raw = 1.0 - class_probabilities(z_val, checkpoint.Checkpoint(
        ckpt.model_name, ckpt.labels, ckpt.preprocessing, 0.5))[:, normal]  # T = 1
    new_t = fit_temperature_multiclass(y_val, z_val)
    ckpt.temperature = new_t
    p_new = probabilities_from_logits(z_val, ckpt)
    target = float(ckpt.config.get("target_sensitivity", 0.98))
    thr = threshold_for_sensitivity(y_sick, p_new, target)
    multi = multiclass_metrics(y_val, class_probabilities(z_val, ckpt), ckpt.labels)
    ckpt.threshold = thr
    ckpt.val_metrics = {**binary_metrics(y_sick, p_new, thr),
                        **{k: multi[k] for k in ("class_accuracy", "macro_auroc",
                                                 "bacterial_vs_viral_accuracy")}}
    summary = {"temperature": new_t, "previous_temperature": old_t, "threshold": thr,
               "previous_threshold": old_thr, "fitted_on": "val", "n_val": int(len(y_val)),
               "threshold_rechosen": f"val sensitivity >= {target}",
               "val_ece_before": expected_calibration_error(y_sick, p_raw),
               "val_ece_after": expected_calibration_error(y_sick, p_new)}
    ckpt.extra["calibration"] = {k: v for k, v in summary.items()
                                 if k not in ("temperature", "threshold")}
    return summary


def calibrate(model_path: str | Path | None, data_dir: str | Path) -> dict:
    """Fit the temperature of an existing run on its val split and rewrite only its model.json.

    Args:
        model_path: run folder or model.json (None = the shipped model).
        data_dir: the dataset the run was trained on (val is rebuilt from its seed).

    Examples:
        >>> calibrate("runs/default-seed42", "data/chest_xray")["temperature"]  # doctest: +SKIP
    """
    folder = checkpoint.resolve(model_path)
    model, ckpt = checkpoint.load(folder)
    val = split_of_run(ckpt.config, data_dir, "val")
    _, y_val, z_val, _ = score_records(model, ckpt, val)
    summary = calibrate_checkpoint(ckpt, y_val, z_val)
    meta = ckpt.to_json()
    meta.pop("path", None)  # load() adds the folder it read from; it is not part of the contract
    (folder / checkpoint.META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return {"model": str(folder), **summary}

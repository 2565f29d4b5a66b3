"""Acquisition cues: simple image statistics that separate the classes in train for reasons
other than the lungs (docs/gap.md), and the views of a split they make possible.

- the statistics model: a logistic regression on five statistics (sharpness, brightness,
  border brightness, body width, file size), fitted on the carved train split only;
- cue-conflicting images: normals that look most like pneumonia by those cues and
  pneumonias that look most normal (the statistics model's top / bottom third per class);
- subgroups by tertile of each statistic;
- a shortcut probe: the statistics model's own AUROC, and the model's AUROC with the lungs
  masked out (a central box set to the image mean).
"""

from __future__ import annotations

import os

import numpy as np

from ..data.decode import load_many
from ..data.runs import split_of_run
from .metrics import auroc, binary_metrics

STATS = ("sharpness", "brightness", "border_brightness", "body_width", "file_kb")
LUNG_BOX = (0.15, 0.85, 0.15, 0.85)  # rows then columns, as fractions of the side


def image_statistics(images: np.ndarray, paths) -> np.ndarray:
    """(N, S, S) uint8 and their files -> (N, 5) float64 in STATS order."""
    a = images.astype(np.float32)
    n, s, _ = a.shape
    b = max(1, s // 20)  # a 5% frame
    frame = np.concatenate([a[:, :b, :].reshape(n, -1), a[:, -b:, :].reshape(n, -1),
                            a[:, :, :b].reshape(n, -1), a[:, :, -b:].reshape(n, -1)], axis=1)
    lap = (4 * a[:, 1:-1, 1:-1] - a[:, :-2, 1:-1] - a[:, 2:, 1:-1] - a[:, 1:-1, :-2]
           - a[:, 1:-1, 2:])
    flat = a.reshape(n, -1)
    mid = a[:, s // 3: 2 * s // 3, :].mean(axis=1)
    body = (mid > np.median(flat, axis=1, keepdims=True)).mean(axis=1)
    kb = np.array([os.path.getsize(p) / 1024 for p in paths])
    return np.stack([lap.reshape(n, -1).var(1), flat.mean(1), frame.mean(1), body, kb], axis=1)


def fit_statistics_model(train_images: np.ndarray, train_paths, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
    return model.fit(image_statistics(train_images, train_paths), y)


def mask_lungs(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    s = images.shape[1]
    r0, r1, c0, c1 = (round(f * s) for f in LUNG_BOX)
    means = images.reshape(len(images), -1).mean(axis=1).round().astype(np.uint8)
    out[:, r0:r1, c0:c1] = means[:, None, None]
    return out


def _metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    m = binary_metrics(y, p, threshold)
    return {"n": int(len(y)), "n_normal": int((y == 0).sum()), "n_pneumonia": int(y.sum()),
            "auroc": auroc(y, p) if 0 < y.sum() < len(y) else None,
            "sensitivity": m["sensitivity"], "specificity": m["specificity"]}


def cue_conflicting(predictor, all_records, ckpt, records, ok, images: np.ndarray,
                    y: np.ndarray, p: np.ndarray) -> dict:
    """The cue views of a scored split (`images`, labels `y`, model probabilities `p`)."""
    train = split_of_run(ckpt.config, all_records, "train")
    prep = ckpt.preprocessing
    x_tr, ok_tr, _ = load_many([r.path for r in train], prep.input_size, prep.interpolation,
                                storage_quality=prep.storage_quality)
    y_tr = np.array([train[i].target for i in ok_tr])
    stats_model = fit_statistics_model(x_tr, [train[i].path for i in ok_tr], y_tr)
    paths = [records[i].path for i in ok]
    feats = image_statistics(images, paths)
    q = stats_model.predict_proba(feats)[:, 1]  # P(pneumonia) from the cues alone
    normal, sick = y == 0, y == 1
    conflict = (normal & (q >= np.quantile(q[normal], 2 / 3))) | \
               (sick & (q <= np.quantile(q[sick], 1 / 3)))
    thr = predictor.threshold
    subgroups = []
    for j, name in enumerate(STATS):
        edges = np.quantile(feats[:, j], [1 / 3, 2 / 3])
        bins = np.digitize(feats[:, j], edges)
        for b, tag in enumerate(("low", "mid", "high")):
            sel = bins == b
            subgroups.append({"statistic": name, "bin": tag,
                              "range": [float(feats[sel, j].min()), float(feats[sel, j].max())],
                              **_metrics(y[sel], p[sel], thr)})
    p_masked = predictor.probabilities(mask_lungs(images))
    return {"statistics": list(STATS), "fitted_on": f"carved train split ({len(y_tr)} images)",
            "statistics_model_auroc": auroc(y, q),
            "cue_conflicting": _metrics(y[conflict], p[conflict], thr),
            "cue_agreeing": _metrics(y[~conflict], p[~conflict], thr),
            "lungs_masked_auroc": auroc(y, p_masked),
            "lung_box": list(LUNG_BOX), "subgroups": subgroups}

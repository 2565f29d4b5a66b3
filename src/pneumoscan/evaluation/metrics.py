"""Pure numpy metric functions on probabilities and binary targets."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Area under the ROC curve. y_true (N,) in {0,1}, y_prob (N,); NaN if one class only."""
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, y_prob))


def threshold_for_sensitivity(y_true: np.ndarray, y_prob: np.ndarray, target: float) -> float:
    """Highest threshold t such that sensitivity (prob >= t counts positive) is >= target."""
    fpr, tpr, thr = roc_curve(y_true, y_prob, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= target)
    return float(min(thr[ok[0]], 1.0))


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict:
    """Confusion counts and rates at `threshold` (positive when prob >= threshold).

    Args:
        y_true: (N,) int array, 1 = pneumonia.
        y_prob: (N,) float array of pneumonia probabilities.
    """
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(y_prob) >= threshold).astype(int)
    tp = int(((pred == 1) & (y_true == 1)).sum())
    fp = int(((pred == 1) & (y_true == 0)).sum())
    tn = int(((pred == 0) & (y_true == 0)).sum())
    fn = int(((pred == 0) & (y_true == 1)).sum())

    def ratio(a, b):
        return a / b if b else float("nan")

    precision, sensitivity = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "n": int(len(y_true)),
        "auroc": auroc(y_true, y_prob),
        "accuracy": ratio(tp + tn, len(y_true)),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * precision * sensitivity, precision + sensitivity),
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


class MetricError(ValueError):
    """A metric that is undefined on the given data (e.g. a split with one class only)."""


def require_both_classes(y_true: np.ndarray, what: str = "this split") -> None:
    """Raise MetricError naming the missing class instead of letting AUROC/specificity be NaN."""
    y_true = np.asarray(y_true).astype(int)
    missing = [name for cls, name in ((0, "NORMAL"), (1, "PNEUMONIA")) if not (y_true == cls).any()]
    if missing:
        raise MetricError(f"{what} has no {' and no '.join(missing)} images "
                          f"({len(y_true)} images): AUROC, sensitivity and specificity need "
                          f"both classes")


def headline_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict:
    """binary_metrics plus PPV (= precision) and NPV, the figures a screening reviewer reads."""
    m = binary_metrics(y_true, y_prob, threshold)
    negatives_called = m["tn"] + m["fn"]
    m["ppv"] = m["precision"]
    m["npv"] = m["tn"] / negatives_called if negatives_called else float("nan")
    return m


HEADLINE_KEYS = ("auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                 "tp", "fp", "tn", "fn")


def bootstrap_ci(y_true: np.ndarray, y_prob: np.ndarray, threshold: float,
                 groups: np.ndarray | None = None, n_resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap intervals of the headline metrics, resampling whole groups.

    Resampling patients (groups) rather than images keeps one child's several X-rays
    together, so correlated images do not make the interval look narrower than it is.

    Args:
        y_true: (N,) 0/1 targets. y_prob: (N,) probabilities.
        groups: (N,) group id per image (patient); None = every image its own group.
        n_resamples: bootstrap replicates; seed: their RNG seed; level: interval coverage.

    Returns:
        {metric: {"value", "low", "high"}} for HEADLINE_KEYS, plus "n_resamples" and
        "n_undefined" (replicates where a metric was undefined, e.g. no NORMAL drawn).

    Examples:
        >>> y = np.array([0, 1] * 50); p = np.linspace(0, 1, 100)
        >>> ci = bootstrap_ci(y, p, 0.5, n_resamples=200)
        >>> ci["auroc"]["low"] <= ci["auroc"]["value"] <= ci["auroc"]["high"]
        True
    """
    y_true, y_prob = np.asarray(y_true).astype(int), np.asarray(y_prob, dtype=np.float64)
    require_both_classes(y_true)
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    _, gid = np.unique(groups, return_inverse=True)
    _, score_rank = np.unique(y_prob, return_inverse=True)
    n_groups = int(gid.max()) + 1
    rng = np.random.default_rng(seed)
    draws = np.empty((n_resamples, len(HEADLINE_KEYS)))
    with np.errstate(invalid="ignore", divide="ignore"):  # undefined draws become NaN
        for b in range(n_resamples):
            drawn = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
            # each image weighs as often as its patient was drawn
            draws[b] = weighted_metrics(y_true, y_prob >= threshold, score_rank, drawn[gid])
    point = headline_metrics(y_true, y_prob, threshold)
    alpha = (1 - level) / 2
    out: dict = {}
    for j, key in enumerate(HEADLINE_KEYS):
        col = draws[:, j][~np.isnan(draws[:, j])]
        low, high = (np.quantile(col, [alpha, 1 - alpha]) if len(col) else (np.nan, np.nan))
        out[key] = {"value": point[key], "low": float(low), "high": float(high)}
    out["n_resamples"] = n_resamples
    out["n_groups"] = n_groups
    out["n_undefined"] = int(np.isnan(draws).any(axis=1).sum())
    return out


def weighted_metrics(y_true: np.ndarray, pred: np.ndarray, score_rank: np.ndarray,
                     w: np.ndarray) -> np.ndarray:
    """HEADLINE_KEYS of a sample in which image i appears w[i] times, in O(N).

    y_true (N,) 0/1, pred (N,) bool, score_rank (N,) dense rank of each score (ties share
    one), w (N,) counts. AUROC is the Mann-Whitney statistic with ties counted half.
    """
    pos, neg = w * (y_true == 1), w * (y_true == 0)
    tp, fn = (pos * pred).sum(), (pos * ~pred).sum()
    fp, tn = (neg * pred).sum(), (neg * ~pred).sum()
    neg_at = np.bincount(score_rank, weights=neg)
    below = np.cumsum(neg_at) - neg_at
    auc = (pos * (below[score_rank] + 0.5 * neg_at[score_rank])).sum() / (pos.sum() * neg.sum())
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    ppv, npv = tp / (tp + fp), tn / (tn + fn)
    return np.array([auc, (tp + tn) / w.sum(), sens, spec, ppv, npv,
                     2 * ppv * sens / (ppv + sens), tp, fp, tn, fn], dtype=np.float64)


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the pneumonia probability: sum over equal-width bins of (bin share) x
    |observed pneumonia rate - mean probability|. y_true (N,) 0/1, y_prob (N,)."""
    return float(sum(b["count"] * abs(b["observed"] - b["mean_prob"])
                     for b in reliability_bins(y_true, y_prob, n_bins)) / max(len(y_true), 1))


def reliability_bins(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> list[dict]:
    """The non-empty equal-width probability bins: edges, count, mean probability, observed rate."""
    y_true, y_prob = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(y_prob, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            bins.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                         "count": int(sel.sum()), "mean_prob": float(y_prob[sel].mean()),
                         "observed": float(y_true[sel].mean())})
    return bins


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


TEMPERATURE_BOUNDS = (0.05, 20.0)  # the search range of fit_temperature(_multiclass)


def fit_temperature(y_true: np.ndarray, logits: np.ndarray) -> float:
    """The single temperature T > 0 minimising the NLL of sigmoid(logits / T).

    A bounded 1-D search over log T in [log 0.05, log 20]; T > 1 softens overconfident scores.
    Fit it on validation logits only. y_true (N,) 0/1, logits (N,).
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)  # log(1 + e^-s) for positives, log(1 + e^s) for negatives
        return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))

    res = minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


def map_threshold(threshold: float, temperature: float, old_temperature: float = 1.0) -> float:
    """The threshold in the new calibrated space, sigmoid(logit(t) * T_old / T): the same
    decision boundary on the logit, so every label stays as it was (scaling is monotonic)."""
    if threshold >= 1.0 or threshold <= 0.0:
        return float(threshold)
    return float(sigmoid(logit(threshold) * old_temperature / temperature))


def youden_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1."""
    fpr, tpr, thr = roc_curve(y_true, y_prob, drop_intermediate=False)
    return float(min(thr[int(np.argmax(tpr - fpr))], 1.0))


def operating_points(y_val: np.ndarray, p_val: np.ndarray, y_eval: np.ndarray,
                     p_eval: np.ndarray, stored: float,
                     targets: tuple[float, ...] = (0.90, 0.95, 0.98, 0.99)) -> list[dict]:
    """Thresholds chosen on validation only, each scored on validation and the evaluated split.

    Rows: one per target sensitivity, one for Youden's J, and the stored threshold
    (`stored: True`). Each row: name, threshold, val_sensitivity, val_specificity,
    sensitivity, specificity (the last two on the evaluated split).
    """
    require_both_classes(y_val, "the validation split")
    rows = [(f"sensitivity >= {t:.2f} on val", threshold_for_sensitivity(y_val, p_val, t), False)
            for t in targets]
    rows += [("Youden's J on val", youden_threshold(y_val, p_val), False),
             ("stored threshold", float(stored), True)]
    out = []
    for name, t, is_stored in rows:
        v, e = binary_metrics(y_val, p_val, t), binary_metrics(y_eval, p_eval, t)
        out.append({"name": name, "threshold": t, "stored": is_stored or t == stored,
                    "val_sensitivity": v["sensitivity"], "val_specificity": v["specificity"],
                    "sensitivity": e["sensitivity"], "specificity": e["specificity"]})
    return out


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (stays inside [0, 1] for small n)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mean_std(rows: list[dict], keys: tuple[str, ...] = HEADLINE_KEYS) -> dict:
    """Mean and sample standard deviation of each key across rows (e.g. models / seeds)."""
    out = {}
    for key in (k for k in keys if all(k in r for r in rows)):
        v = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {"mean": float(np.mean(v)),
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
    return out


def macro_auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the classes; y_true (N,) class indices, probs (N, K).
    A class absent from y_true (or the only one present) is left out; NaN if none is defined."""
    per_class = [auroc(np.asarray(y_true) == k, probs[:, k]) for k in range(probs.shape[1])]
    defined = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, labels, negative: str = "NORMAL"
                       ) -> dict:
    """Argmax metrics of a K-class model: accuracy, per-class recall / precision / AUROC,
    the confusion matrix (rows true, columns predicted, in `labels` order), and the accuracy
    among the true non-`negative` images of the argmax over the non-`negative` classes
    (bacterial_vs_viral_accuracy for the etiology labels).

    Args:
        y_true: (N,) int class indices into `labels`.
        probs: (N, K) class probabilities in `labels` order.
    """
    y_true = np.asarray(y_true).astype(int)
    labels = list(labels)
    k = len(labels)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true, pred), 1)

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    per_class = {name: {"n": int(confusion[i].sum()),
                        "recall": ratio(confusion[i, i], confusion[i].sum()),
                        "precision": ratio(confusion[i, i], confusion[:, i].sum()),
                        "auroc": auroc(y_true == i, probs[:, i])}
                 for i, name in enumerate(labels)}
    neg = labels.index(negative)
    sub = [i for i in range(k) if i != neg]
    sick = y_true != neg
    sub_pred = np.asarray(sub)[probs[sick][:, sub].argmax(axis=1)] if sick.any() else []
    return {"n": int(len(y_true)), "class_accuracy": ratio((pred == y_true).sum(), len(y_true)),
            "macro_auroc": macro_auroc(y_true, probs), "per_class": per_class,
            "confusion": confusion.tolist(), "confusion_labels": labels,
            "bacterial_vs_viral_accuracy": ratio((sub_pred == y_true[sick]).sum(), sick.sum())}


def fit_temperature_multiclass(y_true: np.ndarray, logits: np.ndarray) -> float:
    """The single temperature T > 0 minimising the NLL of softmax(logits / T); y_true (N,)
    class indices, logits (N, K). Same bounded search as fit_temperature; validation only."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    y = np.asarray(y_true, dtype=int)
    z = np.asarray(logits, dtype=np.float64)

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


MULTICLASS_CI_KEYS = ("class_accuracy", "macro_auroc", "bacterial_vs_viral_accuracy")


def weighted_multiclass(y_true: np.ndarray, probs: np.ndarray, score_ranks: list[np.ndarray],
                        w: np.ndarray, negative: int = 0) -> np.ndarray:
    """MULTICLASS_CI_KEYS, then each class's recall, then each class's precision, of a
    sample in which image i appears w[i] times (argmax decisions, as multiclass_metrics).

    y_true (N,) class indices, probs (N, K), score_ranks[k] (N,) dense rank of probs[:, k],
    w (N,) counts, negative the index of NORMAL. Per class this is weighted_metrics one
    class against the rest (its sensitivity is the recall, its PPV the precision).
    """
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    per = np.array([weighted_metrics((y_true == c).astype(int), pred == c, score_ranks[c], w)
                    for c in range(k)])
    aucs = per[:, HEADLINE_KEYS.index("auroc")]
    sub = [c for c in range(k) if c != negative]
    sick = w * (y_true != negative)
    sub_right = np.asarray(sub)[probs[:, sub].argmax(axis=1)] == y_true
    head = [(w * (pred == y_true)).sum() / w.sum(),
            aucs[~np.isnan(aucs)].mean() if (~np.isnan(aucs)).any() else np.nan,
            (sick * sub_right).sum() / sick.sum()]
    return np.concatenate([head, per[:, HEADLINE_KEYS.index("sensitivity")],
                           per[:, HEADLINE_KEYS.index("ppv")]])


def multiclass_bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, labels,
                            groups: np.ndarray | None = None, n_resamples: int = 2000,
                            seed: int = 0, level: float = 0.95, negative: str = "NORMAL"
                            ) -> dict:
    """Percentile bootstrap intervals of a K-class model's argmax metrics, resampling whole
    groups (patients) exactly as bootstrap_ci does (same seed, same draws).

    Args:
        y_true: (N,) int class indices into `labels`. probs: (N, K) class probabilities.
        groups: (N,) patient per image; None = every image its own group.

    Returns:
        {key: {"value", "low", "high"}} for MULTICLASS_CI_KEYS, "per_class": {label:
        {"recall": {...}, "precision": {...}}}, plus "n_resamples" and "n_groups". Values are
        those of multiclass_metrics.

    Examples:
        >>> y = np.array([0, 1, 2] * 20); p = np.eye(3)[y] * 0.5 + 0.5 / 3
        >>> multiclass_bootstrap_ci(y, p, ["NORMAL", "BACTERIAL", "VIRAL"], n_resamples=50
        ...                         )["class_accuracy"]["low"]
        1.0
    """
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    labels = list(labels)
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    _, gid = np.unique(groups, return_inverse=True)
    ranks = [np.unique(probs[:, c], return_inverse=True)[1] for c in range(len(labels))]
    n_groups = int(gid.max()) + 1
    rng = np.random.default_rng(seed)
    draws = []
    with np.errstate(invalid="ignore", divide="ignore"):  # undefined draws become NaN
        for _ in range(n_resamples):
            drawn = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
            draws.append(weighted_multiclass(y_true, probs, ranks, drawn[gid],
                                             labels.index(negative)))
    draws = np.array(draws)
    point = multiclass_metrics(y_true, probs, labels, negative)
    values = [point[key] for key in MULTICLASS_CI_KEYS]
    values += [point["per_class"][name]["recall"] for name in labels]
    values += [point["per_class"][name]["precision"] for name in labels]
    alpha = (1 - level) / 2
    cis = []
    for j, value in enumerate(values):
        col = draws[:, j][~np.isnan(draws[:, j])]
        low, high = np.quantile(col, [alpha, 1 - alpha]) if len(col) else (np.nan, np.nan)
        cis.append({"value": value, "low": float(low), "high": float(high)})
    k = len(labels)
    out: dict = dict(zip(MULTICLASS_CI_KEYS, cis))
    out["per_class"] = {name: {"recall": cis[3 + c], "precision": cis[3 + k + c]}
                        for c, name in enumerate(labels)}
    out["n_resamples"], out["n_groups"] = n_resamples, n_groups
    return out

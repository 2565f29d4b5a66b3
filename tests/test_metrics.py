import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pneumoscan.evaluation.metrics import (
    HEADLINE_KEYS,
    MetricError,
    auroc,
    binary_metrics,
    bootstrap_ci,
    expected_calibration_error,
    fit_temperature,
    headline_metrics,
    map_threshold,
    mean_std,
    operating_points,
    sigmoid,
    threshold_for_sensitivity,
    weighted_metrics,
    wilson_interval,
    youden_threshold,
)


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.05, 0.7])
    m = binary_metrics(y, p, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 3, 1)
    assert m["sensitivity"] == 0.75 and m["specificity"] == 0.75
    assert m["precision"] == 0.75 and m["accuracy"] == 0.75
    assert abs(m["auroc"] - 15 / 16) < 1e-12  # one of 16 pos/neg pairs is misordered
    assert m["n"] == 8


def test_threshold_is_the_highest_that_keeps_sensitivity():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    for target in (0.9, 0.95, 0.98, 1.0):
        t = threshold_for_sensitivity(y, p, target)
        assert binary_metrics(y, p, t)["sensitivity"] >= target
        higher = np.min(p[p > t]) if np.any(p > t) else None
        if higher is not None:  # the next score up would break the target
            assert binary_metrics(y, p, higher)["sensitivity"] < target


def test_auroc_single_class_is_nan():
    assert np.isnan(auroc(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4])))


def _synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(y * 0.35 + rng.random(n) * 0.65, 0, 1)


def test_headline_metrics_agree_with_scikit_learn():
    y, p = _synthetic()
    m, pred = headline_metrics(y, p, 0.5), (p >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))


def test_perfect_inverted_and_constant_predictors():
    y = np.array([0, 0, 0, 1, 1])
    perfect = headline_metrics(y, y * 0.8 + 0.1, 0.5)
    assert perfect["auroc"] == 1 and perfect["sensitivity"] == 1 == perfect["specificity"]
    assert perfect["ppv"] == 1 == perfect["npv"]
    inverted = headline_metrics(y, 0.9 - y * 0.8, 0.5)
    assert inverted["auroc"] == 0 and inverted["sensitivity"] == 0 == inverted["specificity"]
    constant = headline_metrics(y, np.full(5, 0.7), 0.5)  # everyone called positive
    assert constant["auroc"] == 0.5 and constant["sensitivity"] == 1
    assert constant["specificity"] == 0 and constant["ppv"] == pytest.approx(0.4)
    assert np.isnan(constant["npv"])  # no negatives called: NPV undefined, not a crash


def test_single_class_split_gives_a_clear_message():
    with pytest.raises(MetricError, match="no NORMAL images"):
        bootstrap_ci(np.ones(6), np.linspace(0, 1, 6), 0.5)
    with pytest.raises(MetricError, match="validation split has no PNEUMONIA"):
        operating_points(np.zeros(4), np.full(4, 0.2), np.array([0, 1]), np.array([0.1, 0.9]),
                         0.5)


def test_weighted_metrics_equal_the_metrics_of_the_expanded_sample():
    y, p = _synthetic(200, seed=3)
    p = np.round(p, 2)  # ties, counted half by both
    _, rank = np.unique(p, return_inverse=True)
    w = np.random.default_rng(4).integers(0, 4, len(y))
    idx = np.repeat(np.arange(len(y)), w)
    expected = headline_metrics(y[idx], p[idx], 0.5)
    assert weighted_metrics(y, p >= 0.5, rank, w) == pytest.approx(
        [expected[k] for k in HEADLINE_KEYS])


def test_patient_bootstrap_covers_the_truth_and_image_bootstrap_does_not():
    # Each patient has 4 near-identical images: the effective sample is the patients. The true
    # sensitivity is 0.7; patient resampling should cover it ~95% of the time, image
    # resampling (treating the 4 copies as independent) far less.
    rng = np.random.default_rng(0)
    covered = {"patient": 0, "image": 0}
    trials = 80
    for t in range(trials):
        n_pat = 60
        y_pat = np.repeat([0, 1], n_pat // 2)
        hit = rng.random(n_pat) < np.where(y_pat == 1, 0.7, 0.2)  # called positive
        y, p = np.repeat(y_pat, 4), np.repeat(np.where(hit, 0.9, 0.1), 4)
        groups = np.repeat(np.arange(n_pat), 4)
        for kind, g in (("patient", groups), ("image", None)):
            ci = bootstrap_ci(y, p, 0.5, g, n_resamples=300, seed=t)["sensitivity"]
            covered[kind] += ci["low"] <= 0.7 <= ci["high"]
    assert covered["patient"] / trials >= 0.85
    assert covered["image"] / trials <= 0.75


def test_bootstrap_interval_brackets_the_point_and_is_seeded():
    y, p = _synthetic()
    a = bootstrap_ci(y, p, 0.5, np.arange(len(y)) // 2, n_resamples=300, seed=1)
    b = bootstrap_ci(y, p, 0.5, np.arange(len(y)) // 2, n_resamples=300, seed=1)
    assert a == b
    for key in HEADLINE_KEYS:
        assert a[key]["low"] <= a[key]["value"] <= a[key]["high"], key
    assert a["n_groups"] == 200


def test_ece_by_hand():
    y = np.array([1, 0, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9])  # bin of 0.1: observed 0.5; bin of 0.9: observed 1.0
    assert expected_calibration_error(y, p) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0


def test_temperature_fit_lowers_ece_on_an_overconfident_model():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < sigmoid(z)).astype(int)
    overconfident = 3.0 * z
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(y, sigmoid(overconfident))
    after = expected_calibration_error(y, sigmoid(overconfident / t))
    assert after < before / 2


def test_mapped_threshold_keeps_every_label():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, 5000)
    for t, temp in ((0.45, 1.7), (0.2, 0.6), (0.93, 3.0)):
        new_t = map_threshold(t, temp)
        assert np.array_equal(sigmoid(z) >= t, sigmoid(z / temp) >= new_t)
        assert map_threshold(new_t, 1.0, temp) == pytest.approx(t)  # and back


def test_operating_points_depend_on_validation_only():
    y_val, p_val = _synthetic(300, seed=5)
    y_a, p_a = _synthetic(200, seed=6)
    y_b, p_b = _synthetic(100, seed=7)
    a = operating_points(y_val, p_val, y_a, p_a, 0.4)
    b = operating_points(y_val, p_val, y_b, p_b, 0.4)
    for ra, rb in zip(a, b):
        assert ra["threshold"] == rb["threshold"]
        assert ra["val_sensitivity"] == rb["val_sensitivity"] >= (
            float(ra["name"].split()[2]) if ra["name"].startswith("sensitivity") else 0)
    assert a[4]["threshold"] == youden_threshold(y_val, p_val)
    assert [r["stored"] for r in a][-1] and a[-1]["threshold"] == 0.4


def test_wilson_and_mean_std():
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    s = mean_std([{"auroc": 0.9}, {"auroc": 0.8}], ("auroc",))["auroc"]
    assert s["mean"] == pytest.approx(0.85) and s["std"] == pytest.approx(0.0707, abs=1e-4)

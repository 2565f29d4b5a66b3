import numpy as np

from pneumoscan.metrics import auroc, binary_metrics, threshold_for_sensitivity


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

"""The three-class (NORMAL / BACTERIAL / VIRAL) model: a real tiny fit on real images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pneumoscan import checkpoint
from pneumoscan.config import ConfigError, load_config
from pneumoscan.data import ETIOLOGY_LABELS, class_index, load_records, split_train_val
from pneumoscan.metrics import fit_temperature_multiclass, macro_auroc, multiclass_metrics
from pneumoscan.predict import class_probabilities, predict_logits, probabilities_from_logits
from pneumoscan.transforms import load_many

TINY = ["image_size=64", "epochs=1", "batch_size=8", "val_fraction=0.2", "precision=32-true"]


@pytest.fixture(scope="module")
def etiology_run(small_data, tmp_path_factory):
    from pneumoscan.train import fit

    cfg = load_config(None, [*TINY, "task=etiology"])
    return fit(cfg, small_data, tmp_path_factory.mktemp("etiology") / "run")


@pytest.fixture(scope="module")
def loaded(etiology_run):
    return checkpoint.load(etiology_run.dir)


def test_checkpoint_carries_three_labels_task_and_outputs_three_logits(etiology_run, loaded):
    model, ckpt = loaded
    assert ckpt.labels == list(ETIOLOGY_LABELS)
    meta = json.loads((etiology_run.dir / "model.json").read_text())
    assert meta["labels"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert meta["config"]["task"] == "etiology"
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    assert 0.0 < ckpt.threshold < 1.0
    assert ckpt.extra["temperature"] > 0
    for key in ("auroc", "sensitivity", "class_accuracy", "macro_auroc"):
        assert key in ckpt.val_metrics
    assert ckpt.val_metrics["sensitivity"] >= 0.98  # the threshold rule on 1 - P(NORMAL)
    assert (etiology_run.dir / "ood.safetensors").is_file()  # the gate fits a 3-logit model
    history = list(csv.DictReader(open(etiology_run.dir / "history.csv")))
    assert {"val_auroc", "val_pneumonia_auroc", "val_acc"} <= set(history[0])


def test_probabilities_sum_to_one_and_pneumonia_is_one_minus_normal(small_data, loaded):
    model, ckpt = loaded
    paths = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    images = load_many(paths, 64, ckpt.preprocessing.interpolation)[0]
    z = predict_logits(model, ckpt, images)
    assert z.shape == (len(paths), 3)
    probs = class_probabilities(z, ckpt)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probabilities_from_logits(z, ckpt), 1.0 - probs[:, 0])


def test_val_split_is_the_binary_one_for_the_same_seed(small_data, etiology_run):
    _, val = split_train_val(load_records(small_data), 0.2, 42)
    with open(etiology_run.dir / "split.csv") as f:
        written = [r["path"] for r in csv.DictReader(f)]
    assert written[-len(val):] == [r.path for r in val]
    assert {class_index(r, ETIOLOGY_LABELS) for r in val} >= {0, 1}


def test_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="binary, etiology"):
        load_config(None, ["task=etiologie"])


def test_multiclass_metrics_on_a_worked_example():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .3, .6],
                  [.1, .2, .7], [.6, .1, .3]])
    m = multiclass_metrics(y, p, ETIOLOGY_LABELS)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert m["class_accuracy"] == pytest.approx(3 / 6)
    assert m["per_class"]["BACTERIAL"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["BACTERIAL"]["precision"] == pytest.approx(0.5)
    # among the 4 pneumonias, argmax over BACTERIAL/VIRAL: .8>.1 ok, .3<.6 wrong, .2<.7 ok,
    # .1<.3 ok
    assert m["bacterial_vs_viral_accuracy"] == pytest.approx(3 / 4)
    assert m["macro_auroc"] == pytest.approx(macro_auroc(y, p))


def test_multiclass_temperature_softens_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    z = rng.normal(size=(400, 3))
    z[np.arange(400), y] += 1.0
    assert fit_temperature_multiclass(y, z * 5) > fit_temperature_multiclass(y, z)

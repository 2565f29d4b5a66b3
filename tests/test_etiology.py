"""The three-class (NORMAL / BACTERIAL / VIRAL) model: a real tiny fit on real images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pneumoscan.cli import main
from pneumoscan.core.config import ConfigError, load_config
from pneumoscan.core.decisions import class_probabilities, probabilities_from_logits, scaled_sigmoid
from pneumoscan.data import ETIOLOGY_LABELS, class_index, load_records, split_train_val
from pneumoscan.data.decode import load_many
from pneumoscan.evaluation.metrics import (
    fit_temperature_multiclass,
    macro_auroc,
    multiclass_metrics,
)
from pneumoscan.inference.runtime import load_torch
from pneumoscan.inference.torch_backend import predict_logits
from pneumoscan.models import weights as checkpoint
from pneumoscan.workflows.evaluate import evaluate

from .conftest import EXAMPLES


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
    assert ckpt.temperature > 0
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


def test_predict_gives_class_probabilities_etiology_and_the_binary_decision(small_data,
                                                                            etiology_run):
    paths = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    p = load_torch(etiology_run.dir)
    results = p.predict(paths + [str(small_data / "missing.jpeg")], batch_size=5)
    assert results[-1].error and results[-1].class_probabilities is None
    for r in results[:-1]:
        probs = r.class_probabilities
        assert list(probs) == ["NORMAL", "BACTERIAL", "VIRAL"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert r.probability == pytest.approx(1.0 - probs["NORMAL"], abs=1e-12)
        expected = "PNEUMONIA" if r.probability >= p.threshold else "NORMAL"
        assert r.label == (None if r.ood.flagged else expected)
        # the etiology only beside a PNEUMONIA label (issue #18: no "NORMAL ... VIRAL")
        likelier = max(("BACTERIAL", "VIRAL"), key=probs.get)
        assert r.etiology == (likelier if r.label == "PNEUMONIA" else None)
        assert r.to_dict()["class_probabilities"] == probs


def test_binary_predictions_are_unchanged():
    paths = sorted(str(p) for p in EXAMPLES.rglob("*.jpeg"))[:6]
    p = load_torch()
    results = p.predict(paths)
    images = load_many(paths, 224, p.ckpt.preprocessing.interpolation)[0]
    expected = scaled_sigmoid(predict_logits(p.model, p.ckpt, images),
                              p.ckpt.temperature)
    assert [r.probability for r in results] == [float(x) for x in expected]  # bit-exact
    for r in results:
        assert r.label == ("PNEUMONIA" if r.probability >= p.threshold else "NORMAL")
        assert r.class_probabilities == {"NORMAL": 1.0 - r.probability,
                                         "PNEUMONIA": r.probability}
        assert r.etiology is None


def test_evaluate_reports_three_class_and_derived_binary_metrics(small_data, etiology_run,
                                                                 loaded):
    result = evaluate(etiology_run.dir, small_data, "test")
    m = result["multiclass"]
    confusion = np.array(m["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == result["n"] == 12
    assert m["class_accuracy"] == pytest.approx(np.trace(confusion) / 12)
    for i, name in enumerate(ETIOLOGY_LABELS):
        c = m["per_class"][name]
        assert c["n"] == confusion[i].sum()
        if c["n"]:
            assert c["recall"] == pytest.approx(confusion[i, i] / confusion[i].sum())
    assert 0.0 <= m["bacterial_vs_viral_accuracy"] <= 1.0
    # the binary half is the pneumonia probability 1 - P(NORMAL) at the stored threshold
    model, ckpt = loaded
    assert result["threshold"] == ckpt.threshold
    assert result["tp"] + result["fn"] == 6 and result["tn"] + result["fp"] == 6


def test_cli_prints_etiology_columns_and_multiclass_metrics(small_data, etiology_run, capsys):
    image = sorted((small_data / "test" / "PNEUMONIA").iterdir())[0]
    assert main(["predict", str(image), "--model", str(etiology_run.dir)]) == 0
    out = capsys.readouterr().out
    assert "p_BACTERIAL" in out and "etiology" in out
    assert main(["predict", str(image), "--model", str(etiology_run.dir), "--format",
                 "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == ("path,probability,label,p_NORMAL,p_BACTERIAL,p_VIRAL,etiology,"
                      "ood_flagged,ood_score,warnings,error")
    assert main(["evaluate", "--model", str(etiology_run.dir), "--data", str(small_data),
                 "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "bacterial vs viral accuracy" in out and "confusion" in out
    assert main(["evaluate", "--model", str(etiology_run.dir), "--data", str(small_data),
                 "--split", "test", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["multiclass"]["confusion_labels"] == [
        "NORMAL", "BACTERIAL", "VIRAL"]


def test_shipped_etiology_model_is_selected_by_name_and_predicts_three_classes():
    from pneumoscan.models.weights import resolve

    assert resolve("etiology").name == "etiology"
    p = load_torch("etiology")
    assert p.ckpt.labels == ["NORMAL", "BACTERIAL", "VIRAL"]
    paths = sorted(str(f) for f in EXAMPLES.rglob("*.jpeg"))
    results = p.predict(paths)
    assert all(r.error is None for r in results)
    for r in results:
        assert abs(sum(r.class_probabilities.values()) - 1) < 1e-6
        assert r.etiology in (("BACTERIAL", "VIRAL") if r.label == "PNEUMONIA" else (None,))
        assert r.probability == pytest.approx(1 - r.class_probabilities["NORMAL"], abs=1e-9)
    truth = ["PNEUMONIA" if "PNEUMONIA" in path else "NORMAL" for path in paths]
    right = sum(r.label == t for r, t in zip(results, truth))
    assert right >= 14, f"{right}/{len(paths)} of the example originals right"

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.cli import main
from pneumoscan.core.config import config_from_dict
from pneumoscan.data import scan, select
from pneumoscan.data.decode import load_many
from pneumoscan.evaluation.calibration import (
    calibrate,
    predict_logits,
    probabilities,
    score_records,
)
from pneumoscan.evaluation.metrics import (
    MULTICLASS_CI_KEYS,
    map_threshold,
    multiclass_bootstrap_ci,
    multiclass_metrics,
    operating_points,
    weighted_multiclass,
)
from pneumoscan.evaluation.model_card import write_model_card
from pneumoscan.inference.torch_backend import predict_arrays
from pneumoscan.models import weights as checkpoint
from pneumoscan.workflows.evaluate import evaluate

SECTIONS = ("headline", "operating-points", "curves", "calibration", "errors", "provenance")
COUNTS = ("tp", "fp", "tn", "fn")


@pytest.fixture(scope="module")
def report(tiny_run, small_data_with_bad_file, tmp_path_factory):
    """The tiny run's report on its test split, with the checkpoint's bytes before and after."""
    out = tmp_path_factory.mktemp("report")
    files = [tiny_run.dir / "model.json", tiny_run.dir / "model.safetensors"]
    before = [f.read_bytes() for f in files]
    code = main(["evaluate", "--data", str(small_data_with_bad_file), "--split", "test",
                 "--model", str(tiny_run.dir), "--report", str(out), "--resamples", "200"])
    return code, out, before, [f.read_bytes() for f in files]


def test_report_html_is_self_contained_with_every_section(report):
    code, out, _, _ = report
    assert code == 0
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"id='{section}'" in html, section
    sources = re.findall(r'<img alt="[^"]*" src="([^"]{0,30})', html)
    assert len(sources) >= 8  # roc, pr, curves, reliability, confusion and the galleries
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "Training curves" in html and "Not for clinical use" in html
    assert "id='multiclass'" not in html  # a binary model's report is as it was
    assert "multiclass" not in json.loads((out / "metrics.json").read_text())
    for name in ("roc", "pr", "reliability", "confusion", "samples", "training_curves"):
        assert (out / f"{name}.png").stat().st_size > 1000, name


def test_report_numbers_agree_with_evaluate(report, tiny_run, small_data_with_bad_file):
    _, out, _, _ = report
    m = json.loads((out / "metrics.json").read_text())
    plain = evaluate(tiny_run.dir, small_data_with_bad_file, "test")
    for key in ("n", "auroc", "accuracy", "precision", "sensitivity", "specificity", "ppv",
                "npv", "f1", "threshold", *COUNTS):
        assert m["headline"][key] == pytest.approx(plain[key], nan_ok=True), key
        if key in m["ci"]:
            assert m["ci"][key]["value"] == pytest.approx(plain[key], nan_ok=True), key
    prov = m["provenance"]
    assert prov["split_sizes"]["test"] == 12 and len(prov["manifest_sha256"]) == 64
    assert prov["weights_sha256"] == checkpoint.file_sha256(tiny_run.dir / "model.safetensors")
    assert m["ci"]["n_resamples"] == 200
    rows = [r for rows in m["errors"].values() if isinstance(rows, list) for r in rows]
    assert rows and all(not Path(r["path"]).is_absolute() for r in rows)  # portable
    assert all((small_data_with_bad_file / r["path"]).is_file() for r in rows)


def test_nothing_is_fitted_on_the_evaluated_split(report, tiny_run, small_data_with_bad_file):
    _, out, before, after = report
    assert before == after  # evaluating on test leaves the checkpoint byte for byte
    m = json.loads((out / "metrics.json").read_text())
    model, ckpt = checkpoint.load(tiny_run.dir)
    cfg = config_from_dict(ckpt.config)
    records = scan(small_data_with_bad_file)
    _, y_val, z_val, _ = score_records(model, ckpt, select(records, "val", cfg.val_fraction,
                                                           cfg.seed))
    p_val = probabilities(z_val, ckpt.temperature)
    # thresholds from val alone (the evaluated split's arrays are a dummy here)
    from_val = operating_points(y_val, p_val, np.array([0, 1]), np.array([0.0, 1.0]),
                                ckpt.threshold)
    assert [r["threshold"] for r in m["operating_points"]] == [r["threshold"] for r in from_val]
    assert m["calibration"]["temperature"] == ckpt.temperature
    assert m["calibration"]["stored_in_checkpoint"] is True


def test_fit_stores_a_temperature_and_predict_applies_it(tiny_run, small_data):
    model, ckpt = checkpoint.load(tiny_run.dir)
    t = ckpt.temperature
    assert t > 0 and ckpt.extra["calibration"]["fitted_on"] == "val"
    images, _, _ = load_many(sorted(map(str, (small_data / "test").rglob("*.jpeg"))), 64)
    z = predict_logits(model, ckpt, images)
    assert np.array_equal(predict_arrays(model, ckpt, images), probabilities(z, t))
    # the stored threshold is the val threshold moved into calibrated space
    raw = ckpt.extra["calibration"]["previous_threshold"]
    assert ckpt.threshold == pytest.approx(map_threshold(raw, t), abs=1e-5)


def test_calibrate_an_old_checkpoint_keeps_every_label(tiny_run, small_data_with_bad_file,
                                                       tmp_path):
    # An old checkpoint: no temperature, threshold in raw probability space.
    run = tmp_path / "old"
    shutil.copytree(tiny_run.dir, run, ignore=shutil.ignore_patterns("lightning", "logs"))
    meta = json.loads((run / "model.json").read_text())
    meta["threshold"] = meta["calibration"]["previous_threshold"]
    del meta["temperature"], meta["calibration"]
    (run / "model.json").write_text(json.dumps(meta))
    weights = (run / "model.safetensors").read_bytes()
    before = {s: evaluate(run, small_data_with_bad_file, s) for s in ("test", "val")}

    summary = calibrate(run, small_data_with_bad_file)

    assert (run / "model.safetensors").read_bytes() == weights  # only model.json is rewritten
    assert summary["val_ece_after"] <= summary["val_ece_before"] + 1e-9
    stored = json.loads((run / "model.json").read_text())
    assert stored["temperature"] == summary["temperature"] != 1.0
    assert "path" not in stored
    for split, b in before.items():
        a = evaluate(run, small_data_with_bad_file, split)
        assert [a[k] for k in COUNTS] == [b[k] for k in COUNTS], split
        assert a["auroc"] == pytest.approx(b["auroc"]), split


def test_several_models_get_mean_and_std(tiny_run, small_data, capsys):
    code = main(["evaluate", "--data", str(small_data), "--split", "test", "--model",
                 str(tiny_run.dir), "--model", str(tiny_run.dir), "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out["models"]) == 2
    assert out["across_models"]["auroc"]["mean"] == pytest.approx(out["models"][0]["auroc"])
    assert out["across_models"]["auroc"]["std"] == 0


def test_model_card_is_generated_from_metrics_json(report, tiny_run, tmp_path):
    _, out, _, _ = report
    card = write_model_card(tiny_run.dir, out / "metrics.json", tmp_path / "CARD.md").read_text()
    m = json.loads((out / "metrics.json").read_text())
    for heading in ("## Intended use", "## Training data and known biases", "## Evaluation",
                    "## Operating point and how it was chosen", "## Known failure modes",
                    "## Disclaimer"):
        assert heading in card, heading
    assert "not a diagnosis" in card and "Not for clinical use" in card
    assert "Labels: NORMAL, PNEUMONIA." in card and "classes (" not in card
    assert "does not distinguish bacterial from viral" in card
    assert f"{m['ci']['auroc']['value']:.3f} (95% CI {m['ci']['auroc']['low']:.3f}" in card
    with pytest.raises(ValueError, match="holds no evaluation"):
        write_model_card(None, out / "metrics.json", tmp_path / "other.md")


# --- a three-class (NORMAL / BACTERIAL / VIRAL) model -------------------------------------

@pytest.fixture(scope="module")
def etiology_report(etiology_run, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("etiology-report")
    code = main(["evaluate", "--data", str(small_data), "--split", "test", "--model",
                 str(etiology_run.dir), "--report", str(out), "--resamples", "200"])
    return code, out


def test_three_class_report_has_class_metrics_with_patient_intervals(
        etiology_report, etiology_run, small_data, capsys):
    code, out = etiology_report
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    plain = evaluate(etiology_run.dir, small_data, "test")
    mc, ci = m["multiclass"], m["multiclass"]["ci"]
    assert m["labels"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert mc["confusion"] == plain["multiclass"]["confusion"]
    assert np.array(mc["confusion"]).sum() == m["headline"]["n"] == 12
    for key in MULTICLASS_CI_KEYS:
        assert mc[key] == pytest.approx(plain["multiclass"][key], nan_ok=True), key
        assert ci[key]["value"] == pytest.approx(mc[key], nan_ok=True), key
        assert not ci[key]["low"] > ci[key]["high"], key
    for name, c in mc["per_class"].items():
        for what in ("recall", "precision"):
            assert ci["per_class"][name][what]["value"] == pytest.approx(c[what], nan_ok=True)
    assert ci["n_resamples"] == 200 and ci["n_groups"] == m["ci"]["n_groups"]
    # the headline is the binary pneumonia decision (1 - P(NORMAL)), as evaluate gives it
    assert [m["headline"][k] for k in COUNTS] == [plain[k] for k in COUNTS]
    assert m["calibration"]["temperature"] == checkpoint.load(etiology_run.dir)[1].temperature
    html = (out / "report.html").read_text()
    assert "id='multiclass'" in html and "Bacterial vs viral accuracy" in html
    assert html.count("<td>true ") == 3 and "predicted VIRAL" in html
    for section in SECTIONS:
        assert f"id='{section}'" in html, section


def test_multiclass_bootstrap_weights_reproduce_the_point_metrics():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet([1, 1, 1], 90)
    p[np.arange(90), y] += 0.4
    p /= p.sum(axis=1, keepdims=True)
    labels = ["NORMAL", "BACTERIAL", "VIRAL"]
    ranks = [np.unique(p[:, c], return_inverse=True)[1] for c in range(3)]
    m = multiclass_metrics(y, p, labels)
    expected = [m[k] for k in MULTICLASS_CI_KEYS]
    expected += [m["per_class"][n]["recall"] for n in labels]
    expected += [m["per_class"][n]["precision"] for n in labels]
    np.testing.assert_allclose(weighted_multiclass(y, p, ranks, np.ones(90)), expected)
    # drawing every image twice is the same sample
    np.testing.assert_allclose(weighted_multiclass(y, p, ranks, np.full(90, 2.0)), expected)
    # whole patients: 30 patients of 3 images each; a perfect model has zero-width intervals
    ci = multiclass_bootstrap_ci(y, np.eye(3)[y], labels, np.repeat(np.arange(30), 3), 100)
    assert ci["n_groups"] == 30
    assert ci["class_accuracy"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert ci["per_class"]["VIRAL"]["precision"]["low"] == 1.0


def test_three_class_model_card_lists_labels_and_class_metrics(etiology_report, etiology_run,
                                                              tmp_path):
    _, out = etiology_report
    card = write_model_card(etiology_run.dir, out / "metrics.json", tmp_path / "CARD.md"
                            ).read_text()
    m = json.loads((out / "metrics.json").read_text())
    _, ckpt = checkpoint.load(etiology_run.dir)
    assert "Labels: NORMAL, BACTERIAL, VIRAL." in card
    assert "### 3 classes (NORMAL, BACTERIAL, VIRAL)" in card
    assert "does not distinguish bacterial from viral" not in card
    assert f"accuracy {ckpt.val_metrics['class_accuracy']:.3f}, macro AUROC " in card
    acc = m["multiclass"]["ci"]["class_accuracy"]
    assert f"| 3-class accuracy | {acc['value']:.3f} (95% CI {acc['low']:.3f}" in card
    row = m["multiclass"]["confusion"][2]
    assert f"| VIRAL | {row[0]} | {row[1]} | {row[2]} |" in card


def test_manifest_hash_is_the_same_through_a_relative_data_path(small_data):
    import os

    from pneumoscan.data import load_records
    from pneumoscan.evaluation.report import manifest_sha256

    relative = os.path.relpath(small_data)
    assert not os.path.isabs(relative)
    # provenance() passes the resolved data folder, whatever form the records' paths take
    assert (manifest_sha256(load_records(relative), Path(relative).resolve())
            == manifest_sha256(load_records(small_data), small_data))

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscan import checkpoint
from pneumoscan.calibration import calibrate, predict_logits, probabilities, score_records
from pneumoscan.cli import main
from pneumoscan.config import config_from_dict
from pneumoscan.data import scan, select
from pneumoscan.evaluate import evaluate
from pneumoscan.metrics import map_threshold, operating_points
from pneumoscan.model_card import write_model_card
from pneumoscan.predict import predict_arrays
from pneumoscan.transforms import load_many

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
    p_val = probabilities(z_val, ckpt.extra["temperature"])
    # thresholds from val alone (the evaluated split's arrays are a dummy here)
    from_val = operating_points(y_val, p_val, np.array([0, 1]), np.array([0.0, 1.0]),
                                ckpt.threshold)
    assert [r["threshold"] for r in m["operating_points"]] == [r["threshold"] for r in from_val]
    assert m["calibration"]["temperature"] == ckpt.extra["temperature"]
    assert m["calibration"]["stored_in_checkpoint"] is True


def test_fit_stores_a_temperature_and_predict_applies_it(tiny_run, small_data):
    model, ckpt = checkpoint.load(tiny_run.dir)
    t = ckpt.extra["temperature"]
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
    assert f"{m['ci']['auroc']['value']:.3f} (95% CI {m['ci']['auroc']['low']:.3f}" in card
    with pytest.raises(ValueError, match="holds no evaluation"):
        write_model_card(None, out / "metrics.json", tmp_path / "other.md")

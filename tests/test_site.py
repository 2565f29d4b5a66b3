"""`pneumoscan calibrate --site`: a new site's threshold, written into a new run folder."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from pneumoscan.cli import main
from pneumoscan.workflows.site import confidence_of, needed_positives, site_threshold


def test_confidence_follows_order_statistics():
    assert confidence_of(50, 1, 0.97) == pytest.approx(1 - 0.97 ** 50)
    assert needed_positives(0.97, 0.95) == 99
    assert confidence_of(99, 1, 0.97) >= 0.95 > confidence_of(98, 1, 0.97)
    # more pneumonia images allow a higher order statistic at the same confidence
    y = np.r_[np.zeros(300), np.ones(300)]
    p = np.r_[np.linspace(0, 0.6, 300), np.linspace(0.3, 1, 300)]
    few = site_threshold(y[200:400], p[200:400])  # 100 normals, 100 pneumonia
    many = site_threshold(y, p)
    assert few["k"] == 1 and many["k"] > 1
    assert many["threshold"] in p[300:] and many["confidence_reached"] >= 0.95
    assert few["threshold"] == pytest.approx(0.3)


def test_too_few_pneumonia_says_so():
    r = site_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.4, 0.9]))
    assert r["k"] == 1 and r["threshold"] == 0.4
    assert r["confidence_reached"] < 0.95 and r["pneumonia_needed_for_confidence"] == 99
    with pytest.raises(ValueError, match="both classes"):
        site_threshold(np.array([0, 0]), np.array([0.1, 0.2]))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_site_writes_a_new_run_and_leaves_the_model(tiny_run, data_dir, tmp_path,
                                                             capsys):
    site = tmp_path / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label.lower()).mkdir(parents=True)  # folder names in any case
        for f in sorted((data_dir / "val" / label).iterdir()):
            shutil.copy2(f, site / label.lower() / f.name)
    (site / "normal" / "broken.jpeg").write_bytes(b"not an image")
    before = _sha(tiny_run.dir / "model.json")
    out = tmp_path / "site-run"
    code = main(["calibrate", "--model", str(tiny_run.dir), "--site", str(site),
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # one unreadable file, reported; the rest calibrated
    assert "broken.jpeg" in captured.err and "99 would" in captured.err
    assert _sha(tiny_run.dir / "model.json") == before
    from pneumoscan.models.weights import load

    _, new = load(out)
    _, old = load(tiny_run.dir)
    assert new.extra["site_calibration"]["n_pneumonia"] == 8
    assert new.extra["site_calibration"]["previous_threshold"] == old.threshold
    assert _sha(out / "model.safetensors") == _sha(tiny_run.dir / "model.safetensors")
    # with 8 pneumonia images the rule takes the lowest of their scores; every one of them
    # is then called PNEUMONIA by the new run
    # (--label-ood: a tiny run's OOD gate is meaningless and would withhold some labels)
    code = main(["predict", "--model", str(out), "--format", "json", "--label-ood",
                 str(site / "pneumonia")])
    result = json.loads(capsys.readouterr().out)
    rows = result["predictions"]
    assert code == 0 and len(rows) == 8 and result["threshold"] == new.threshold
    assert min(r["probability"] for r in rows) == pytest.approx(new.threshold, abs=1e-6)
    assert {r["label"] for r in rows} == {"PNEUMONIA"}
    # never over an existing folder, never onto the input model
    assert main(["calibrate", "--model", str(tiny_run.dir), "--site", str(site),
                 "--out", str(out)]) == 2
    assert main(["calibrate", "--model", str(tiny_run.dir), "--site", str(site),
                 "--out", str(tiny_run.dir)]) == 2
    assert main(["calibrate", "--model", str(tiny_run.dir), "--site", str(site)]) == 2
    assert _sha(tiny_run.dir / "model.json") == before

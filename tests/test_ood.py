"""The out-of-distribution gate: fitted on train, threshold on val, stored beside the weights,
computed with every prediction; foreign images are flagged, real X-rays are not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan import cli
from pneumoscan.core.contract import default_model_dir, read
from pneumoscan.inference.runtime import load_torch
from pneumoscan.models import weights as checkpoint
from pneumoscan.training import ood


def foreign_pngs(folder: Path) -> list[Path]:
    """A cat photo (colour), uniform noise and a blank image, as files."""
    import skimage.data

    rng = np.random.default_rng(0)
    images = {"cat": skimage.data.chelsea(),
              "noise": rng.integers(0, 256, (300, 300), dtype=np.uint8),
              "blank": np.full((300, 300), 255, np.uint8)}
    folder.mkdir(exist_ok=True)
    for name, img in images.items():
        Image.fromarray(img).save(folder / f"{name}.png")
    return [folder / f"{name}.png" for name in images]


@pytest.fixture(scope="module")
def shipped():
    return load_torch()


@pytest.fixture(scope="module")
def test_xrays(data_dir) -> list[str]:
    return [str(p) for label in ("NORMAL", "PNEUMONIA")
            for p in sorted((data_dir / "test" / label).glob("*.jpeg"))[:5]]


def test_shipped_model_flags_foreign_images_and_passes_real_xrays(shipped, test_xrays,
                                                                   tmp_path):
    gate = shipped.ckpt.ood
    assert gate["fitted_on"] == "train" and gate["threshold_on"] == "val"
    foreign = shipped.predict([str(p) for p in foreign_pngs(tmp_path)])
    real = shipped.predict(test_xrays)
    for r in foreign + real:
        assert np.isfinite(r.ood.score) and r.probability is not None
    assert all(r.ood.flagged for r in foreign), [(r.path, r.ood.score) for r in foreign]
    assert not any(r.ood.flagged for r in real), [(r.path, r.ood.score) for r in real]
    assert min(r.ood.score for r in foreign) > gate["threshold"] > max(r.ood.score for r in real)


def test_gate_does_not_change_probabilities(shipped, test_xrays):
    from pneumoscan.data.decode import load_many
    from pneumoscan.inference.torch_backend import predict_arrays

    images = load_many(test_xrays, 224)[0]
    probs, scores = shipped.scores(images)
    assert np.array_equal(probs, predict_arrays(shipped.model, shipped.ckpt, images))
    assert scores.shape == probs.shape and np.isfinite(scores).all()


def test_cli_predict_has_ood_columns_and_warns(tmp_path, capsys, test_xrays):
    cat = str(foreign_pngs(tmp_path)[0])
    assert cli.main(["predict", cat, test_xrays[0], "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "path,probability,label,ood_flagged,ood_score,warnings,error"
    flagged, real = (dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:])
    assert flagged["ood_flagged"] == "True" and real["ood_flagged"] == "False"
    # a flagged image keeps its probability but gets no label; --label-ood gives one
    threshold = read(default_model_dir()).threshold  # the real X-ray gets the model's label
    assert flagged["label"] == "" and flagged["probability"]
    assert real["label"] == ("PNEUMONIA" if float(real["probability"]) >= threshold else "NORMAL")
    assert "out of distribution" in flagged["warnings"] and real["warnings"] == ""
    assert "warning:" in err and "cat.png" in err and test_xrays[0] not in err
    assert cli.main(["predict", cat, "--format", "csv", "--label-ood"]) == 0
    row = dict(zip(*(line.split(",") for line in capsys.readouterr().out.splitlines())))
    assert row["label"] in ("NORMAL", "PNEUMONIA") and row["ood_flagged"] == "True"


def test_new_run_gets_a_gate_from_its_own_split(tiny_run, small_data):
    run = load_torch(tiny_run.dir)
    gate = run.ckpt.ood
    assert (tiny_run.dir / checkpoint.OOD).is_file()
    assert gate["n_train"] + gate["n_val"] == 48  # 49 train-folder files, one unreadable
    tests = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    res = run.predict(tests)
    assert all(isinstance(r.ood.flagged, bool) and np.isfinite(r.ood.score) for r in res)


def test_checkpoint_without_gate_still_predicts(tiny_run, small_data, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run.dir, old)
    meta = json.loads((old / checkpoint.META).read_text())
    del meta["ood"]
    (old / checkpoint.META).write_text(json.dumps(meta))
    (old / checkpoint.OOD).unlink()
    tests = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))[:4]
    before = load_torch(tiny_run.dir).predict(tests)
    after = load_torch(old).predict(tests)
    assert all(r.ood.flagged is None and r.ood.score is None for r in after)
    assert [r.probability for r in after] == [r.probability for r in before]


def test_fit_ood_never_reads_test_and_matches_training(tiny_run, small_data_with_bad_file,
                                                       tmp_path):
    # With every test image replaced by noise the data gives the training-time gate again:
    # test images never enter the fit (noise would move the mean and the threshold).
    data = tmp_path / "chest_xray"
    shutil.copytree(small_data_with_bad_file, data)
    rng = np.random.default_rng(0)
    for p in (data / "test").rglob("*.jpeg"):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(p, "JPEG")
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run)
    trained = load_torch(run).ckpt
    assert cli.main(["fit-ood", "--model", str(run), "--data", str(data)]) == 0
    refit = load_torch(run).ckpt
    assert refit.ood["n_train"] == trained.ood["n_train"]
    assert refit.ood["threshold"] == pytest.approx(trained.ood["threshold"],
                                                             rel=1e-4)
    np.testing.assert_allclose(refit.ood_stats["mean"], trained.ood_stats["mean"], atol=1e-5)
    assert checkpoint.file_sha256(run / checkpoint.WEIGHTS) == \
        trained.extra["weights_sha256"]  # weights untouched


def test_scores_are_mahalanobis_when_all_components_kept():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    stats = ood.fit_stats(train, components=5)
    x = rng.normal(size=(3, 6))
    assert np.all(np.isfinite(ood.scores(x, stats)))
    far = ood.scores(train.mean(0, keepdims=True) + 100 * train.std(0), stats)
    near = ood.scores(train.mean(0, keepdims=True), stats)
    assert far[0] > 10 * max(near[0], 1e-3)


def test_serve_reports_ood_and_warns(tmp_path, test_xrays):
    from fastapi.testclient import TestClient

    from pneumoscan.serve import create_app

    cat = foreign_pngs(tmp_path)[0]
    with TestClient(create_app()) as client:
        bodies = [client.post("/v1/predict", files={"file": (Path(p).name, Path(p).read_bytes(),
                                                             "image/png")}).json()
                  for p in (cat, test_xrays[0])]
    flagged, real = bodies
    assert flagged["ood"]["flagged"] is True and flagged["probability"] is not None
    assert flagged["label"] is None and flagged["etiology"] is None
    assert any("out of distribution" in w for w in flagged["warnings"])
    assert real["ood"]["flagged"] is False and real["warnings"] == []
    assert real["ood"]["score"] < real["ood"]["threshold"] < flagged["ood"]["score"]


def test_model_json_without_its_gate_file_warns_and_predicts(tiny_run, test_xrays, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run)
    (run / checkpoint.OOD).unlink()
    with pytest.warns(UserWarning, match="ood.safetensors is missing"):
        p = load_torch(run)
    assert p.predict(test_xrays[:1])[0].ood.flagged is None
    (run / checkpoint.OOD).write_bytes(b"not safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable OOD statistics"):
        checkpoint.load(run)


def test_batch_of_only_unreadable_files(shipped, tmp_path):
    bad = tmp_path / "bad.jpeg"
    bad.write_text("not an image")
    (r,) = shipped.predict([str(bad)])
    assert r.error and r.ood.flagged is None and r.ood.score is None

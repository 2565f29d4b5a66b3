"""Ensembles of real tiny runs: `train seeds=` builds one; it averages its members' calibrated
class probabilities, keeps a threshold chosen on the val split they share, and works wherever
--model takes a run folder."""

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pneumoscan.cli import main
from pneumoscan.core.decisions import class_probabilities
from pneumoscan.core.errors import CheckpointError
from pneumoscan.data.decode import load_many
from pneumoscan.evaluation.metrics import threshold_for_sensitivity
from pneumoscan.explain.explainer import Explainer
from pneumoscan.inference.runtime import load_torch
from pneumoscan.inference.torch_backend import predict_logits
from pneumoscan.models import weights as checkpoint
from pneumoscan.training.ensemble import EnsembleBackend, EnsembleError, build, parse_seeds
from pneumoscan.workflows.evaluate import evaluate


def _test_images(small_data, n=12):
    paths = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))[:n]
    images, ok, _ = load_many(paths, 64, "bilinear")
    assert len(ok) == len(paths)
    return paths, images


def test_train_seeds_writes_members_on_one_split_and_the_ensemble(tiny_seeds):
    meta = json.loads((tiny_seeds / "ensemble" / "ensemble.json").read_text())
    assert [m["path"] for m in meta["members"]] == ["../seed-0", "../seed-1"]
    assert [m["seed"] for m in meta["members"]] == [0, 1]
    for m in meta["members"]:
        member = tiny_seeds / "seed-0" if m["seed"] == 0 else tiny_seeds / "seed-1"
        assert m["weights_sha256"] == checkpoint.file_sha256(member / checkpoint.WEIGHTS)
    _, a = checkpoint.load(tiny_seeds / "seed-0")
    _, b = checkpoint.load(tiny_seeds / "seed-1")
    assert (a.config["seed"], b.config["seed"]) == (0, 1)
    assert a.config["split_seed"] == b.config["split_seed"] == 42  # the default seed's split
    assert (tiny_seeds / "seed-0" / "split.csv").read_text() == \
        (tiny_seeds / "seed-1" / "split.csv").read_text()
    assert meta["labels"] == a.labels and meta["threshold_split"] == "val"
    assert meta["tta"] is False and "git_sha" in meta


def test_ensemble_averages_member_class_probabilities(tiny_seeds, small_data):
    paths, images = _test_images(small_data)
    ens = load_torch(tiny_seeds / "ensemble")
    assert isinstance(ens.backend, EnsembleBackend) and len(ens.backend.members) == 2
    members = [checkpoint.load(tiny_seeds / f"seed-{s}") for s in (0, 1)]
    per_member = [class_probabilities(predict_logits(m, c, images), c) for m, c in members]
    expected = np.mean(per_member, axis=0)
    np.testing.assert_allclose(ens.class_probabilities(images), expected, atol=1e-12)
    normal = ens.ckpt.labels.index("NORMAL")
    p = ens.probabilities(images)
    np.testing.assert_allclose(p, 1.0 - expected[:, normal], atol=1e-12)
    assert not np.allclose(per_member[0], per_member[1])  # two different members
    results = ens.predict(paths)
    assert [r.probability for r in results] == pytest.approx(list(p), abs=1e-12)
    assert [r.label for r in results] == \
        ["PNEUMONIA" if x >= ens.threshold else "NORMAL" for x in p]


def test_threshold_is_chosen_on_the_shared_val_split(tiny_seeds, small_data_with_bad_file):
    meta = json.loads((tiny_seeds / "ensemble" / "ensemble.json").read_text())
    result = evaluate(tiny_seeds / "ensemble", small_data_with_bad_file, "val")
    stored = meta["val_metrics"]
    assert {k: result[k] for k in ("n", "tp", "fp", "tn", "fn", "threshold")} == \
        {k: stored[k] for k in ("n", "tp", "fp", "tn", "fn", "threshold")}
    assert result["sensitivity"] >= 0.98
    # the training rule (metrics.threshold_for_sensitivity) on the ensemble's val scores
    ens = load_torch(tiny_seeds / "ensemble")
    from pneumoscan.data import load_records, select

    recs = select(load_records(small_data_with_bad_file), "val", 0.2, 42)
    images, ok, _ = load_many([r.path for r in recs], 64, "bilinear")
    y = np.array([recs[i].target for i in ok])
    assert ens.threshold == threshold_for_sensitivity(y, ens.probabilities(images), 0.98)


def _copy(tiny_seeds, tmp_path):
    dst = tmp_path / "copy"
    for name in ("seed-0", "seed-1", "ensemble"):
        shutil.copytree(tiny_seeds / name, dst / name,
                        ignore=shutil.ignore_patterns("lightning", "logs", "cache"))
    return dst


def test_a_changed_member_is_a_clear_error(tiny_seeds, tmp_path):
    d = _copy(tiny_seeds, tmp_path)
    shutil.copy(d / "seed-0" / "model.safetensors", d / "seed-1" / "model.safetensors")
    with pytest.raises(EnsembleError, match=r"member \.\./seed-1: model.safetensors has sha256"):
        load_torch(d / "ensemble")


def test_members_with_other_labels_or_split_are_refused(tiny_seeds, small_data_with_bad_file,
                                                        tmp_path):
    d = _copy(tiny_seeds, tmp_path)
    meta_path = d / "seed-1" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "labels": ["NORMAL", "SICK"]}))
    # a binary contract must say ['NORMAL', 'PNEUMONIA']: refused on load, naming the member
    with pytest.raises(CheckpointError, match=r"seed-1.*labels \['NORMAL', 'SICK'\]"):
        build([d / "seed-0", d / "seed-1"], d / "bad", small_data_with_bad_file)
    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "split_seed": 7}}))
    with pytest.raises(EnsembleError, match="seed-1 was trained on another train/val split"):
        build([d / "seed-0", d / "seed-1"], d / "bad", small_data_with_bad_file)
    # the official val folder is outside every member's train pool
    path = build([d / "seed-0", d / "seed-1"], d / "official", small_data_with_bad_file,
                 threshold_split="val-official")
    assert json.loads(path.read_text())["val_metrics"]["n"] == 4


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("1", "0,0", "a,b"):
        with pytest.raises(EnsembleError):
            parse_seeds(bad)


def test_cli_predict_evaluate_serve_take_an_ensemble_folder(tiny_seeds, small_data, capsys):
    ens_dir = tiny_seeds / "ensemble"
    paths, images = _test_images(small_data, 3)
    p = load_torch(ens_dir).probabilities(images)
    assert main(["predict", *paths, "--model", str(ens_dir), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == json.loads((ens_dir / "ensemble.json").read_text())["threshold"]
    assert [r["probability"] for r in out["predictions"]] == pytest.approx(list(p), abs=1e-9)
    assert main(["evaluate", "--data", str(small_data), "--split", "test", "--model",
                 str(ens_dir), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 12 and result["threshold"] == out["threshold"]
    from pneumoscan.serve import Settings, create_app

    with TestClient(create_app(Settings(model=str(ens_dir)))) as client:
        with open(paths[0], "rb") as f:
            r = client.post("/v1/predict?explain=true", files={"file": ("x.jpeg", f)})
    assert r.status_code == 200
    # one image per forward pass here vs three above: float noise only (cf. test_predict)
    assert r.json()["probability"] == pytest.approx(p[0], abs=1e-5)
    assert r.json()["heatmap_png"] is None  # no Grad-CAM of an ensemble


def test_export_and_explain_refuse_an_ensemble(tiny_seeds, small_data, tmp_path, capsys):
    ens_dir = tiny_seeds / "ensemble"
    code = main(["export", "--model", str(ens_dir), "--data", str(small_data), "--out",
                 str(tmp_path / "e.onnx")])
    assert code == 2
    assert "not exported as one ONNX graph" in capsys.readouterr().err
    assert not (tmp_path / "e.onnx").exists()
    with pytest.raises(checkpoint.CheckpointError, match="explain one of its member runs"):
        Explainer.from_checkpoint(ens_dir)


def _tampered(d, **changes):
    meta_path = d / "ensemble" / "ensemble.json"
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))
    return meta


@pytest.mark.parametrize("case", ["climbs out", "absolute", "no weights_sha256", "no path",
                                  "not an object", "zero members", "no members",
                                  "no threshold", "threshold NaN"])
def test_a_malformed_or_escaping_ensemble_file_is_a_usage_error(tiny_seeds, small_data,
                                                                tmp_path, capsys, case):
    """Members outside the folder that holds the ensemble are refused even with the right
    weights; a missing key or no member is exit 2 with a message naming it, no traceback."""
    d = _copy(tiny_seeds, tmp_path / "group")
    outside = tmp_path / "outside" / "seed-0"  # the same weights, out of the group folder
    shutil.copytree(d / "seed-0", outside)
    members = json.loads((d / "ensemble" / "ensemble.json").read_text())["members"]
    changes, expected = {
        "climbs out": ({"members": [{**members[0], "path": "../../../outside/seed-0"},
                                    members[1]]}, "'../../../outside/seed-0' is not inside"),
        "absolute": ({"members": [{**members[0], "path": str(outside)}, members[1]]},
                     "is not inside"),
        "no weights_sha256": ({"members": [members[0], {"path": "../seed-1"}]},
                              "member 2 of 'members' has no string 'weights_sha256'"),
        "no path": ({"members": [{"weights_sha256": "0" * 64}]},
                    "member 1 of 'members' has no string 'path'"),
        "not an object": ({"members": ["../seed-0"]}, "member 1 of 'members' has no string"),
        "zero members": ({"members": []}, "key 'members' must list at least one member"),
        "no members": ({"members": None}, "key 'members' must list at least one member"),
        "no threshold": ({"threshold": None}, "key 'threshold' must be a number"),
        "threshold NaN": ({"threshold": float("nan")}, "key 'threshold' must be a number"),
    }[case]
    _tampered(d, **changes)
    image = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))[0]
    assert main(["predict", image, "--model", str(d / "ensemble")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "ensemble.json" in err and "Traceback" not in err


def test_build_refuses_members_outside_the_folder_that_holds_the_ensemble(
        tiny_seeds, small_data_with_bad_file, tmp_path):
    d = _copy(tiny_seeds, tmp_path / "group")
    with pytest.raises(EnsembleError, match="is not inside .*put --out beside the member runs"):
        build([d / "seed-0", d / "seed-1"], tmp_path / "elsewhere" / "ens",
              small_data_with_bad_file)

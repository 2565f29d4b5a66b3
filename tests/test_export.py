import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pneumoscan.cli import main
from pneumoscan.core.decisions import class_probabilities
from pneumoscan.data.decode import load_many
from pneumoscan.inference.export import (
    FEATURES,
    LOGIT,
    export_model,
    export_onnx,
    onnx_outputs,
    read_metadata,
    shape_arithmetic,
)
from pneumoscan.inference.onnx import OnnxBackend
from pneumoscan.inference.predictor import Predictor
from pneumoscan.inference.runtime import load_torch, make_predictor
from pneumoscan.models import weights as checkpoint

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def exported(tiny_run, small_data, tmp_path_factory):
    images = sorted(str(p) for p in (small_data / "train").rglob("*.jpeg"))
    arr, _, _ = load_many(images, 64)
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_onnx(tiny_run.dir, out, arr[:16], calibration=arr[16:])
    return out, report, arr


def test_export_parity_outputs_and_contract(exported, tiny_run):
    out, report, arr = exported
    assert report["fp32"]["max_abs_prob_diff"] <= 1e-3
    assert list(report["fp32"]["max_abs_class_prob_diff"]) == ["NORMAL", "PNEUMONIA"]
    assert report["int8"]["n_calibration"] == len(arr) - 16
    # The padding arithmetic of TF-'same' convs stays float in INT8: quantized, it computed
    # wrong pad sizes (shifted feature maps; 15 flipped test labels before this was found).
    int8 = onnx.load(report["int8"]["path"]).graph.node
    kinds = {n.name: n.op_type for n in int8}
    traced = shape_arithmetic(report["int8"]["path"])
    # (A DequantizeLinear may appear: a Clip's 0 constant shared with a quantized ReLU6, exact
    # in 8 bits. A QuantizeLinear would mean pad arithmetic rounded to 8 bits, the old bug.)
    assert traced and "QuantizeLinear" not in {kinds[n] for n in traced}
    _, ckpt = checkpoint.load(tiny_run.dir)
    meta = read_metadata(out)
    assert meta["threshold"] == ckpt.threshold and meta["labels"] == ckpt.labels
    assert meta["preprocessing"] == ckpt.preprocessing.to_dict()
    assert meta["val_metrics"] == json.loads(json.dumps(ckpt.val_metrics))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logit, feats = sess.run([LOGIT, FEATURES], {"image": arr[:5, None]})  # any batch size
    assert logit.shape == (5, 1) and feats.shape[0] == 5 and feats.ndim == 4
    # CAM weights in the metadata reproduce the logit from the features (pool -> linear).
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    cam = json.loads(props["pneumoscan.cam_weights"])
    assert props["pneumoscan.output"].startswith("logit (B, 1): the PNEUMONIA logit")
    pooled = feats.mean(axis=(2, 3))
    recomputed = pooled @ np.array(cam["weight"]).T + np.array(cam["bias"])
    assert np.abs(recomputed - logit).max() < 1e-3


def test_onnx_predictor_matches_torch_and_reports_bad_file(exported, tiny_run, small_data,
                                                           tmp_path):
    out, _, _ = exported
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    images = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    paths = images[:3] + [str(bad)] + images[3:]
    torch_p = load_torch(tiny_run.dir)
    torch_p.label_ood = True  # the bare .onnx file carries no OOD gate: compare every label
    ref = torch_p.predict(paths)
    got = Predictor(*OnnxBackend.from_file(out)).predict(paths)
    assert got[3].error and "broken.jpeg" in got[3].error and got[3].probability is None
    for r, g in zip(ref[:3] + ref[4:], got[:3] + got[4:]):
        assert abs(r.probability - g.probability) < 1e-3 and r.label == g.label


def test_export_cli_shipped_model_on_real_images(tmp_path, capsys):
    """The shipped model, exported with parity on real val images, predicts the examples
    the same through ONNX Runtime as through torch."""
    out = tmp_path / "m.onnx"
    assert main(["export", "--out", str(out)]) == 0
    assert "max |dp|" in capsys.readouterr().out
    assert main(["predict", str(EXAMPLES), "--runtime", "onnx", "--onnx", str(out),
                 "--format", "json"]) == 0
    onnx_rows = json.loads(capsys.readouterr().out)["predictions"]
    assert main(["predict", str(EXAMPLES), "--format", "json"]) == 0
    torch_rows = json.loads(capsys.readouterr().out)["predictions"]
    assert len(onnx_rows) == len(torch_rows) == 16
    for a, b in zip(onnx_rows, torch_rows):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-3


def test_default_predict_is_the_shipped_onnx_with_ood_scores_equal_to_torch(onnx_cache, capsys):
    """The shipped model scores on the ONNX graph shipped beside its weights (no export, no
    torch model) and gives torch's labels, probabilities and OOD scores on the 16 originals."""
    for f in onnx_cache.glob("*.onnx"):
        f.unlink()
    predictor = make_predictor(None, paths=[str(p) for p in sorted(EXAMPLES.rglob("*.jpeg"))])
    assert predictor.runtime == "onnxruntime" and predictor.model is None
    assert main(["predict", str(EXAMPLES), "--format", "json"]) == 0
    default_rows = json.loads(capsys.readouterr().out)["predictions"]
    assert list(onnx_cache.glob("*.onnx")) == []  # nothing exported
    assert main(["predict", str(EXAMPLES), "--runtime", "torch", "--format", "json"]) == 0
    torch_rows = json.loads(capsys.readouterr().out)["predictions"]
    assert len(default_rows) == len(torch_rows) == 16
    for a, b in zip(default_rows, torch_rows):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-5
        assert a["ood"]["flagged"] is b["ood"]["flagged"] is False
        assert abs(a["ood"]["score"] - b["ood"]["score"]) < 1e-4 * b["ood"]["score"]


def test_default_predict_exports_a_run_once_and_reuses_the_cache(onnx_cache, tiny_run,
                                                                  small_data, capsys):
    """A run without model.onnx is exported once (parity-checked on the first inputs) into
    the cache, which later calls reuse; its scores equal torch's."""
    for f in onnx_cache.glob("*.onnx"):
        f.unlink()
    paths = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    predictor = make_predictor(tiny_run.dir, paths=paths)
    assert predictor.runtime == "onnxruntime"
    (cached,) = onnx_cache.glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    assert main(["predict", *paths, "--model", str(tiny_run.dir), "--format", "json"]) == 0
    default_rows = json.loads(capsys.readouterr().out)["predictions"]
    assert list(onnx_cache.glob("*.onnx")) == [cached] and cached.stat().st_mtime_ns == stamp
    torch_rows = [r.to_dict() for r in load_torch(tiny_run.dir).predict(paths)]
    for a, b in zip(default_rows, torch_rows):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-3


def test_default_predict_falls_back_to_torch_with_one_notice(tmp_path, monkeypatch, capsys,
                                                             tiny_run, small_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(blocker / "cache"))
    image = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))[0]
    model = ["--model", str(tiny_run.dir)]
    assert main(["predict", image, *model, "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["predictions"][0]["label"] in ("NORMAL", "PNEUMONIA")
    notices = [line for line in captured.err.splitlines() if "ONNX Runtime not used" in line]
    assert len(notices) == 1 and "PyTorch" in notices[0]
    assert main(["predict", image, *model, "--runtime", "onnx"]) == 2  # forced: no fallback
    assert "--runtime onnx" in capsys.readouterr().err


def test_onnx_logits_stay_generic_for_k_class_models(small_data, tmp_path):
    """(N, K) logits keep their shape and go through the same probability formula as torch."""
    from pneumoscan.core.preprocessing import Preprocessing
    from pneumoscan.inference.torch_backend import predict_arrays
    from pneumoscan.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("custom-cnn", num_outputs=3).eval()
    ckpt = checkpoint.Checkpoint("custom-cnn", ["NORMAL", "BACTERIA", "VIRUS"],
                                 Preprocessing(input_size=64), 0.5, {})
    images = load_many(sorted(str(p) for p in (small_data / "test").rglob("*.jpeg")), 64)[0]
    out = tmp_path / "k.onnx"
    assert export_model(model, ckpt, out, images)["fp32"]["max_abs_prob_diff"] <= 1e-3
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, pooled = onnx_outputs(session, images, features=True)
    assert logits.shape == (len(images), 3) and pooled.shape[0] == len(images)
    got = Predictor(OnnxBackend(session), ckpt).probabilities(images)
    assert np.abs(got - predict_arrays(model, ckpt, images)).max() < 1e-4


def test_gradcam_from_onnx_equals_gradcam_from_pytorch(exported, tiny_run):
    from pneumoscan.explain.cam import cam_from_features
    from pneumoscan.explain.gradients import gradcam

    out, _, arr = exported
    model, ckpt = checkpoint.load(tiny_run.dir)
    images = arr[:6]
    torch_maps = gradcam(model, ckpt, images)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (feats,) = sess.run([FEATURES], {"image": images[:, None]})
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    weight = np.array(json.loads(props["pneumoscan.cam_weights"])["weight"][0])
    onnx_maps = np.stack([cam_from_features(f, weight) for f in feats])
    assert onnx_maps.shape == torch_maps.shape and torch_maps.max() == 1.0  # real maps, not blank
    assert np.abs(onnx_maps - torch_maps).max() < 1e-3, np.abs(onnx_maps - torch_maps).max()


def test_three_class_export_keeps_every_class_logit(etiology_run, small_data, tmp_path):
    paths = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    arr, _, _ = load_many(sorted(str(p) for p in (small_data / "train").rglob("*.jpeg")), 64)
    out = tmp_path / "etiology.onnx"
    report = export_onnx(etiology_run.dir, out, arr[::3])
    per_class = report["fp32"]["max_abs_class_prob_diff"]
    assert list(per_class) == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert max(per_class.values()) <= 1e-3 and report["fp32"]["label_flips"] == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logit,) = sess.run([LOGIT], {"image": arr[:5, None]})
    assert logit.shape == (5, 3)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["labels"]) == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert props["pneumoscan.output"].startswith(
        'logit (B, 3): class logits in the order of labels ["NORMAL", "BACTERIAL", "VIRAL"]')
    assert len(json.loads(props["pneumoscan.cam_weights"])["weight"]) == 3

    onnx_p = Predictor(*OnnxBackend.from_file(out))
    z = onnx_p.logits(arr[:4])
    assert z.shape == (4, 3)
    np.testing.assert_array_equal(onnx_p.class_scores(arr[:4])[1],
                                  class_probabilities(z, onnx_p.ckpt))
    torch_p = load_torch(etiology_run.dir)
    torch_p.label_ood = True  # the bare .onnx file carries no OOD gate: compare every label
    ref = torch_p.predict(paths)
    for r, g in zip(ref, onnx_p.predict(paths)):
        assert g.class_probabilities == pytest.approx(r.class_probabilities, abs=1e-3)
        assert g.label == r.label and g.etiology == r.etiology

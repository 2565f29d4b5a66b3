"""The inference install: predict, explain and serve without PyTorch, on the ONNX graphs
shipped beside the weights, which must reproduce those weights."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.cli import main
from pneumoscan.core import contract
from pneumoscan.core.decisions import class_probabilities, probabilities_from_logits
from pneumoscan.data.decode import load_many
from pneumoscan.inference.onnx import FEATURES, LOGIT, OnnxBackend, open_session, read_metadata
from pneumoscan.inference.runtime import make_predictor, shipped_graph

from .conftest import EXAMPLES

REPO = Path(__file__).resolve().parents[1]
TORCH_SIDE = ("torch", "torchvision", "timm", "lightning", "captum", "sklearn", "onnx",
              "matplotlib")


def _run(code: str, tmp_path: Path, block_torch: bool = False) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter on this source tree; with block_torch, importing any
    package of the training extra fails there as if it were not installed."""
    prelude = ""
    if block_torch:
        prelude = ("import sys\n"
                   f"for name in {TORCH_SIDE!r}:\n"
                   "    sys.modules[name] = None  # `import name` raises ImportError\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PNEUMOSCAN_CACHE": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_predict_explain_and_serve_never_import_torch(tmp_path):
    code = f"""
import json, sys
from pneumoscan.cli import main
assert main(["predict", {str(EXAMPLES)!r}, "--format", "json"]) == 0
assert main(["predict", {str(EXAMPLES / "NORMAL")!r}, "--model", "etiology"]) == 0
assert main(["explain", {str(EXAMPLES / "PNEUMONIA")!r}, "--out", "maps"]) == 0
assert main(["predict", {str(EXAMPLES / "NORMAL")!r}, "--explain", "maps2"]) == 0
from fastapi.testclient import TestClient
from pneumoscan.serve import Settings, create_app
with TestClient(create_app(Settings())) as c:
    image = open({str(sorted(EXAMPLES.rglob("*.jpeg"))[0])!r}, "rb").read()
    r = c.post("/v1/predict?explain=true", files={{"file": ("x.jpeg", image, "image/jpeg")}})
    assert r.status_code == 200 and r.json()["heatmap_png"], r.text
    assert c.get("/v1/model").json()["runtime"] == "onnxruntime"
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {TORCH_SIDE!r})
print(json.dumps(heavy), file=sys.stderr)
assert not heavy, heavy
"""
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "maps").glob("*.png"))) == 8
    assert len(list((tmp_path / "maps2").glob("*.png"))) == 8


def test_a_verb_of_the_training_extra_says_how_to_install_it(tmp_path):
    code = """
from pneumoscan.cli import main
import sys
sys.exit(main(sys.argv[1:]))
"""
    run = tmp_path / "run"  # calibrate rewrites a run of yours, never a shipped model
    run.mkdir()
    for f in contract.default_model_dir().iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    for argv in (["train", "epochs=1"], ["calibrate", "--model", str(run)],
                 ["explain", str(EXAMPLES), "--method", "occlusion"]):
        out = _run(code.replace("sys.argv[1:]", repr(argv)), tmp_path, block_torch=True)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and 'pip install "pneumoscan[train]"' in lines[0], out.stderr


def test_a_run_without_its_graph_needs_the_training_extra(tmp_path, tiny_run):
    code = f"""
from pneumoscan.cli import main
import sys
sys.exit(main(["predict", {str(EXAMPLES)!r}, "--model", {str(tiny_run.dir)!r}]))
"""
    out = _run(code, tmp_path, block_torch=True)
    assert out.returncode == 2
    assert "model.onnx" in out.stderr and 'pip install "pneumoscan[train]"' in out.stderr


@pytest.mark.parametrize("name", ["default", "etiology"])
def test_shipped_graph_reproduces_the_shipped_weights(name):
    """model.onnx cannot drift from model.safetensors: it names their sha256 and scores
    within 1e-5 of the torch model on the examples (regenerate it with `pneumoscan export
    --model src/pneumoscan/weights/NAME --out src/pneumoscan/weights/NAME/model.onnx`)."""
    from pneumoscan.inference.torch_backend import predict_logits
    from pneumoscan.models import weights as checkpoint

    folder = contract.shipped_models()[name]
    graph = folder / contract.GRAPH
    meta = read_metadata(graph)
    assert meta["weights_sha256"] == contract.file_sha256(folder / contract.WEIGHTS)
    # The contract inside the graph (what `--onnx FILE` alone reads) is model.json's, every
    # key of it (best_epoch included), but the folder it was exported from.
    shipped = json.loads((folder / contract.META).read_text())
    assert set(meta) - {"path"} == set(shipped)
    for key in shipped:
        assert meta[key] == shipped[key], key
    assert shipped_graph(folder) == graph
    model, ckpt = checkpoint.load(folder)
    images = load_many(sorted(str(p) for p in EXAMPLES.rglob("*.jpeg")), 224)[0]
    backend = OnnxBackend(open_session(graph), graph)
    z_onnx, _ = backend.forward(images)
    z_torch = predict_logits(model, ckpt, images)
    assert z_onnx.shape == z_torch.shape
    for f in (probabilities_from_logits, class_probabilities):
        assert np.abs(f(z_onnx, ckpt) - f(z_torch, ckpt)).max() < 1e-5
    names = [o.name for o in backend.session.get_outputs()]
    assert names == [LOGIT, FEATURES]


@pytest.mark.parametrize("name", ["default", "etiology"])
def test_onnx_gradcam_equals_captum_gradcam(name):
    """Grad-CAM from the graph's features (numpy) equals captum's on the torch model, also
    for a K-class model's pneumonia log-odds."""
    from pneumoscan.explain.explainer import Explainer

    images = load_many(sorted(str(p) for p in EXAMPLES.rglob("*.jpeg"))[::3], 224)[0]
    onnx_maps = Explainer.from_checkpoint(name, runtime="onnx").maps(images)
    torch_maps = Explainer.from_checkpoint(name, runtime="torch").maps(images)
    assert onnx_maps.shape == torch_maps.shape == (len(images), 224, 224)
    assert np.abs(onnx_maps - torch_maps).max() < 1e-3


def test_heatmap_colours_equal_matplotlibs_turbo():
    from matplotlib import colormaps

    from pneumoscan.explain.cam import heatmap_rgba

    h = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    h[0, :4] = [0.0, 1.0, 0.5, 0.99999]
    expected = colormaps["turbo"](np.clip(h, 0.0, 1.0))
    expected[..., 3] = 0.55 * h
    np.testing.assert_array_equal(heatmap_rgba(h), np.round(expected * 255).astype(np.uint8))


def test_onnx_file_alone_carries_its_contract():
    backend, ckpt = OnnxBackend.from_file(contract.shipped_models()["default"] / contract.GRAPH)
    shipped = json.loads((contract.default_model_dir() / contract.META).read_text())
    assert ckpt.labels == shipped["labels"] and ckpt.threshold == shipped["threshold"]
    assert make_predictor(None).runtime == "onnxruntime"


@pytest.mark.parametrize("key, value, says", [
    ("temperature", -1.0, "temperature"), ("temperature", "hot", "temperature"),
    ("threshold", 1.5, "threshold"), ("ood", {"method": "x"}, "ood.threshold"),
    ("labels", ["CAT", "DOG"], "labels"), ("labels", ["PNEUMONIA", "NORMAL"], "labels"),
    ("threshold", float("nan"), "threshold"), ("threshold", -1, "threshold"),
    ("temperature", float("nan"), "temperature"),
    ("preprocessing.input_size", 100000, "preprocessing.input_size"),
    ("preprocessing.std", 0, "preprocessing.std"),
    ("preprocessing.mean", float("inf"), "preprocessing.mean"),
    ("preprocessing.interpolation", "lanczos", "preprocessing.interpolation"),
    ("preprocessing.storage_quality", 400, "preprocessing.storage_quality")])
def test_every_decision_key_of_the_contract_is_checked_on_load(tmp_path, key, value, says):
    """A model.json whose temperature, threshold, labels or OOD gate could not be applied is a
    CheckpointError naming the key, before any image is scored."""
    from pneumoscan.core.errors import CheckpointError

    for f in contract.default_model_dir().iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    meta = json.loads((tmp_path / contract.META).read_text())
    where, _, name = key.rpartition(".")
    (meta[where] if where else meta)[name] = value
    (tmp_path / contract.META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=says):
        make_predictor(tmp_path)
    # the command line: one line naming the key, exit code 2, no image scored
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["predict", str(EXAMPLES / "NORMAL"), "--model", str(tmp_path)])
    assert code == 2 and says in err.getvalue() and "Traceback" not in err.getvalue()


def test_contract_read_takes_a_str_and_names_the_file_when_it_is_malformed(tmp_path):
    assert contract.read(str(contract.default_model_dir())).labels == ["NORMAL", "PNEUMONIA"]
    (tmp_path / contract.META).write_text('{"format": "pneumoscan-checkpoint/1"}')
    with pytest.raises(contract.CheckpointError, match="model.json: malformed"):
        contract.read(str(tmp_path))

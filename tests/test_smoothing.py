"""Preprocessing.smoothing: a Gaussian inside the model (every reader applies it), and
scripts/recontract.py, which gives a trained run that contract with a refitted operating point."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pneumoscan.core.preprocessing import Preprocessing
from pneumoscan.data.decode import load_gray
from pneumoscan.inference.runtime import load_torch, make_predictor
from pneumoscan.models.transforms import gaussian_smooth, to_model_input
from pneumoscan.training.recontract import recontract

from .conftest import REPO


def test_old_contracts_are_not_smoothed_and_bad_sigmas_are_named():
    d = Preprocessing().to_dict()
    d.pop("smoothing")
    assert Preprocessing.from_dict(d).smoothing == 0
    for bad in (-1.0, float("nan"), 9.0, "2"):
        assert [k for k, _ in Preprocessing(smoothing=bad).problems()] == ["smoothing"]
    assert Preprocessing(smoothing=2.0).problems() == []


def test_smoothing_keeps_flat_images_and_the_mean_and_removes_pixel_texture(data_dir,
                                                                             originals_dir):
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert torch.allclose(gaussian_smooth(flat, 2.0), flat, atol=1e-6)
    name = "NORMAL2-IM-1437-0001.jpeg"  # the val image whose original and copy disagreed most
    copy = load_gray(data_dir / "val" / "NORMAL" / name, 224, storage_quality=75)
    orig = load_gray(originals_dir / "val" / "NORMAL" / name, 224, storage_quality=75)
    x = torch.from_numpy(np.stack([copy, orig])).unsqueeze(1)
    plain = to_model_input(x, Preprocessing(storage_quality=75))
    smooth = to_model_input(x, Preprocessing(storage_quality=75, smoothing=2.0))
    assert smooth.shape == plain.shape
    assert abs(float(smooth.mean() - plain.mean())) < 0.01  # reflected borders: no dark frame
    # the original and its copy differ by pixel texture: smoothing shrinks that difference
    gap_plain = (plain[0] - plain[1]).abs().mean()
    gap_smooth = (smooth[0] - smooth[1]).abs().mean()
    assert gap_smooth < 0.6 * gap_plain


@pytest.fixture(scope="module")
def smoothed_run(tiny_run, small_data_with_bad_file, tmp_path_factory):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in tiny_run.dir.iterdir() if p.is_file()}
    out = tmp_path_factory.mktemp("recontract") / "smoothed"
    # tiny_run's own data (its split depends on every record; the bad file is skipped again)
    ckpt = recontract(tiny_run.dir, out, small_data_with_bad_file, smoothing=1.5)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in tiny_run.dir.iterdir() if p.is_file()}
    assert after == before  # the input run is read, never written
    return out, ckpt


def test_recontract_writes_a_new_run_with_the_contract_and_a_refitted_operating_point(
        smoothed_run, tiny_run, small_data_with_bad_file, tmp_path):
    out, ckpt = smoothed_run
    meta = json.loads((out / "model.json").read_text())
    assert meta["preprocessing"]["smoothing"] == 1.5
    assert meta["recontracted_from"]["run"] == str(tiny_run.dir.resolve())
    assert meta["ood"]["n_train"] > 0 and (out / "ood.safetensors").is_file()
    assert (out / "split.csv").read_bytes() == (tiny_run.dir / "split.csv").read_bytes()
    # the same weights, read through the new contract
    src = (tiny_run.dir / "model.safetensors").read_bytes()
    assert (out / "model.safetensors").read_bytes() == src
    # sigma 0 refits the operating point training chose (same split, same decode)
    again = recontract(tiny_run.dir, tmp_path / "plain", small_data_with_bad_file,
                       smoothing=0.0)
    trained = json.loads((tiny_run.dir / "model.json").read_text())
    assert again.threshold == pytest.approx(trained["threshold"], abs=1e-6)
    assert again.temperature == pytest.approx(trained["temperature"], rel=1e-4)
    with pytest.raises(FileExistsError, match="never over"):
        recontract(tiny_run.dir, out, small_data_with_bad_file, smoothing=1.0)


def test_smoothed_run_scores_alike_in_torch_and_its_onnx_export(smoothed_run, tiny_run,
                                                                small_data):
    out, _ = smoothed_run
    paths = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    onnx_p = make_predictor(out, paths=paths)
    assert onnx_p.runtime == "onnxruntime"
    smooth = [r.probability for r in load_torch(out).predict(paths)]
    plain = [r.probability for r in load_torch(tiny_run.dir).predict(paths)]
    assert np.abs(np.array([r.probability for r in onnx_p.predict(paths)]) - smooth).max() < 1e-3
    assert np.abs(np.array(smooth) - plain).max() > 1e-3  # the graph does smooth


def test_recontract_script_refuses_a_bad_sigma_and_writes_nothing(tiny_run, small_data,
                                                                  tmp_path):
    out = tmp_path / "new"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "recontract.py"),
                        str(tiny_run.dir), "--out", str(out), "--smoothing", "-1",
                        "--data", str(small_data)], capture_output=True, text=True)
    assert r.returncode != 0 and "smoothing" in r.stderr and not out.exists()

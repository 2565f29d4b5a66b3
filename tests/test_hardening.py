"""Issue #18 (part): tampered models are refused, shipped models are never rewritten, and a
FIFO never hangs a prediction."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from pneumoscan.cli import main
from pneumoscan.models import weights as checkpoint

from .conftest import EXAMPLES

IMAGE = EXAMPLES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"


@pytest.fixture()
def copied_model(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(checkpoint.default_model_dir(), dst)
    return dst


def test_negated_classifier_is_refused_with_exit_code_2(copied_model, capsys):
    state = load_file(copied_model / "model.safetensors")
    state["classifier.weight"] = -state["classifier.weight"]
    save_file(state, copied_model / "model.safetensors")
    code = main(["predict", "--model", str(copied_model), str(IMAGE)])
    err = capsys.readouterr().err
    assert code == 2
    assert "weights_sha256" in err and "model.safetensors" in err
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        checkpoint.load(copied_model)


def test_tampered_ood_statistics_are_refused(copied_model):
    stats = load_file(copied_model / "ood.safetensors")
    name = sorted(stats)[0]
    stats[name] = stats[name] * 2
    save_file(stats, copied_model / "ood.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="ood.sha256"):
        checkpoint.load(copied_model)


def test_untampered_copy_loads(copied_model):
    _, ckpt = checkpoint.load(copied_model)
    assert ckpt.extra["weights_sha256"] == checkpoint.file_sha256(
        copied_model / "model.safetensors")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("verb", ["calibrate", "fit-ood"])
def test_commands_that_write_a_model_never_touch_the_shipped_ones(verb, capsys):
    shipped = {name: _sha(d / "model.json") for name, d in checkpoint.shipped_models().items()}
    assert main([verb]) == 2
    assert "--model RUN is required" in capsys.readouterr().err
    for name, folder in checkpoint.shipped_models().items():
        for given in (name, str(folder), str(folder / "model.json")):
            assert main([verb, "--model", given]) == 2
            assert "never modified" in capsys.readouterr().err
    assert shipped == {name: _sha(d / "model.json")
                       for name, d in checkpoint.shipped_models().items()}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_reported_not_waited_for(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy2(IMAGE, folder / IMAGE.name)
    os.mkfifo(folder / "x.jpeg")
    for target in (folder / "x.jpeg", folder):
        # a hang would be killed by the timeout and fail the test
        out = subprocess.run([sys.executable, "-m", "pneumoscan.cli", "predict", "--format",
                              "json", str(target)], capture_output=True, text=True, timeout=120)
        rows = json.loads(out.stdout)["predictions"]
        fifo = [r for r in rows if r["path"].endswith("x.jpeg")]
        assert len(fifo) == 1 and "not a regular file" in fifo[0]["error"]
        assert out.returncode == 1  # one file failed, the rest was scored
    assert any(r["label"] == "NORMAL" for r in rows)

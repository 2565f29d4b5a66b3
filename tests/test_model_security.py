"""Model files: only safetensors + JSON load by default; a pickle is refused unless allowed,
and even then a malicious one runs nothing."""

import os
import pickle
import shutil
from contextlib import redirect_stderr
from io import StringIO

import numpy as np
import pytest
import torch

from pneumoscan import cli
from pneumoscan.inference.runtime import load_torch
from pneumoscan.models import weights as checkpoint

from .conftest import EXAMPLES


class _Evil:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _model_folder(tmp_path):
    """A copy of the shipped model's model.json, for pickles to sit beside."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(checkpoint.default_model_dir() / checkpoint.META, folder / checkpoint.META)
    return folder


def _malicious_files(folder, marker):
    zipped = folder / "evil.pt"  # torch.save's zip format
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, zipped)
    legacy = folder / "evil.ckpt"  # a bare pickle stream
    legacy.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    return [zipped, legacy]


def test_the_marker_payload_is_real(tmp_path):
    """Guard against a vacuous test: plain pickle.loads does run the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


@pytest.mark.parametrize("allow", [False, True])
def test_malicious_pickle_never_executes(tmp_path, allow):
    marker = tmp_path / "ran"
    folder = _model_folder(tmp_path)
    for path in _malicious_files(folder, marker):
        expected = "refusing to load a pickle" if not allow else "not loadable as weights only"
        with pytest.raises(checkpoint.CheckpointError, match=expected):
            checkpoint.load(path, allow_pickle=allow)
        args = ["predict", str(EXAMPLES / "NORMAL"), "--model", str(path)]
        err = StringIO()
        with redirect_stderr(err):
            code = cli.main(args + (["--allow-pickle"] if allow else []))
        assert code == cli.USAGE_ERROR and str(path) in err.getvalue()
        if not allow:
            assert "--allow-pickle" in err.getvalue()
    assert not marker.exists()


def test_allowed_pickles_of_real_weights_predict_as_safetensors(tmp_path):
    model, _ = checkpoint.load(None)
    folder = _model_folder(tmp_path)
    state = model.state_dict()
    torch.save(state, folder / "weights.pt")
    (folder / "lightning").mkdir()  # a Lightning checkpoint of LitClassifier, one level down
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 4},
               folder / "lightning" / "best.ckpt")
    paths = sorted(str(p) for p in EXAMPLES.rglob("*.jpeg"))[::4]
    ref = [r.probability for r in load_torch(None).predict(paths)]
    for path in (folder / "weights.pt", folder / "lightning" / "best.ckpt"):
        with pytest.raises(checkpoint.CheckpointError, match="allow-pickle"):
            checkpoint.load(path)
        got = [r.probability for r in load_torch(path, allow_pickle=True)
               .predict(paths)]
        assert np.allclose(got, ref, atol=1e-6), path


def test_pickle_without_its_json_and_corrupt_safetensors_are_clear_errors(tmp_path):
    lone = tmp_path / "lone" / "weights.pt"
    lone.parent.mkdir()
    torch.save({"w": torch.zeros(1)}, lone)
    with pytest.raises(checkpoint.CheckpointError, match="no model.json beside it"):
        checkpoint.load(lone, allow_pickle=True)
    folder = tmp_path / "broken"
    shutil.copytree(checkpoint.default_model_dir(), folder)
    data = (folder / checkpoint.WEIGHTS).read_bytes()
    (folder / checkpoint.WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="unreadable weights"):
        checkpoint.load(folder)


def test_shipped_models_are_selected_by_name_and_a_path_wins(tmp_path, monkeypatch):
    assert checkpoint.resolve("default") == checkpoint.default_model_dir()
    assert checkpoint.resolve(None) == checkpoint.default_model_dir()
    # A folder called "default" in the working directory is a path, not the shipped model.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="not a pneumoscan model"):
        checkpoint.resolve("default")
    with pytest.raises(checkpoint.CheckpointError, match="no-such-model"):
        checkpoint.resolve("no-such-model")

"""Interrupted training: a real training process is SIGKILLed after its first epoch's
checkpoint, resumed with `train --resume`, and must end where an uninterrupted run ends."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from pneumoscan import cli
from pneumoscan.core.config import load_config
from pneumoscan.models import weights as checkpoint
from pneumoscan.training.resume import LAST, AtomicCheckpointIO, ResumeError, run_config
from pneumoscan.training.train import fit

from .conftest import REPO

OVERRIDES = ["image_size=64", "epochs=3", "batch_size=8", "val_fraction=0.2",
             "model=custom-cnn", "pretrained=false", "precision=32-true"]
# Same seed, same data, RNG restored: the resumed run is expected to be bit-identical on
# this CPU; the tolerance only allows for a different float summation order elsewhere.
TOL = 1e-5


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _kill_after_first_epoch(data, run_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "pneumoscan.cli", "train", "--data",
                             str(data), "--out", str(run_dir), *OVERRIDES],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (run_dir / LAST).exists():
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


@pytest.fixture(scope="module")
def killed_and_resumed(small_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    run_dir = root / "killed"
    _kill_after_first_epoch(small_data, run_dir)
    assert not (run_dir / checkpoint.WEIGHTS).exists()  # killed before the end
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "pneumoscan.cli", "train", "--data",
                           str(small_data), "--resume", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir, done.stdout


def test_resumed_run_matches_an_uninterrupted_one(killed_and_resumed, small_data, tmp_path):
    run_dir, stdout = killed_and_resumed
    assert "run folder:" in stdout
    model, ckpt = checkpoint.load(run_dir)  # a valid best checkpoint
    assert not model.training and ckpt.config == run_config(run_dir).to_dict()
    whole = fit(load_config(None, OVERRIDES), small_data, tmp_path / "whole")
    a, b = _history(run_dir), _history(whole.dir)
    assert [r["epoch"] for r in a] == [1, 2, 3]  # history survives the kill
    for ra, rb in zip(a, b):
        assert ra.pop("epoch_seconds") > 0 and rb.pop("epoch_seconds") > 0  # wall time differs
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], abs=TOL), (ra["epoch"], key)
    assert ckpt.extra["best_epoch"] == whole.best_epoch
    assert ckpt.threshold == pytest.approx(whole.val_metrics["threshold"], abs=TOL)
    for key, value in whole.val_metrics.items():
        assert ckpt.val_metrics[key] == pytest.approx(value, abs=TOL), key
    last_a = torch.load(run_dir / LAST, weights_only=True)
    last_b = torch.load(whole.dir / LAST, weights_only=True)
    assert last_a["epoch"] == last_b["epoch"] == 2
    for k, v in last_b["state_dict"].items():
        assert torch.allclose(last_a["state_dict"][k], v, atol=TOL), k
    assert not list(run_dir.rglob("*.tmp-*"))  # no temp files left by the atomic writes


def test_corrupt_or_missing_last_checkpoint_is_a_clear_error(killed_and_resumed, tmp_path,
                                                             small_data, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(killed_and_resumed[0], run_dir)
    data = (run_dir / LAST).read_bytes()
    (run_dir / LAST).write_bytes(data[: len(data) // 2])
    cfg = run_config(run_dir)
    with pytest.raises(ResumeError, match="corrupt or truncated checkpoint"):
        fit(cfg, small_data, run_dir, resume_run=True)
    assert cli.main(["train", "--data", str(small_data), "--resume", str(run_dir)]) == 2
    assert "last.ckpt: corrupt or truncated" in capsys.readouterr().err
    (run_dir / LAST).write_bytes(b"")
    with pytest.raises(ResumeError, match="corrupt or truncated"):
        fit(cfg, small_data, run_dir, resume_run=True)
    (run_dir / LAST).unlink()
    with pytest.raises(ResumeError, match="no last checkpoint to resume from"):
        fit(cfg, small_data, run_dir, resume_run=True)
    # Nothing was retrained over the run: its model files are the resumed run's.
    assert (checkpoint.file_sha256(run_dir / checkpoint.WEIGHTS)
            == checkpoint.file_sha256(killed_and_resumed[0] / checkpoint.WEIGHTS))


def test_resume_refuses_other_data_and_extra_settings(killed_and_resumed, tmp_path,
                                                      small_data, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(killed_and_resumed[0], run_dir)
    assert cli.main(["train", "--resume", str(run_dir), "epochs=5"]) == cli.USAGE_ERROR
    assert "--resume takes the run's own config.yaml" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(small_data, other)
    next((other / "train" / "NORMAL").iterdir()).unlink()
    with pytest.raises(ResumeError, match="data differs from the interrupted run"):
        fit(run_config(run_dir), other, run_dir, resume_run=True)
    with pytest.raises(ResumeError, match="no config.yaml"):
        run_config(tmp_path)


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (a lambda cannot be pickled: torch.save fails)
        io.save_checkpoint({"epoch": 2, "fn": lambda: None}, path)
    assert path.read_bytes() == before and torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]

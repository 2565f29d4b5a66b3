"""A real 2-process DDP fit on CPU (gloo), launched as a user would: the CLI re-launched by
Lightning's subprocess launcher, one process per device."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumoscan.models import weights as checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("task", ["binary", "etiology"])
def test_ddp_two_processes_on_cpu(task, small_data, tmp_path):
    """etiology: the (N, 3) class probabilities are gathered across ranks."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pneumoscan.cli", "train", "--data", str(small_data),
           "--out", str(out), "strategy=ddp", "accelerator=cpu", "devices=2",
           "image_size=48", "epochs=1", "batch_size=8", "val_fraction=0.15",
           "precision=32-true", f"task={task}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    model, ckpt = checkpoint.load(out)  # rank 0 wrote a loadable checkpoint
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["strategy"] == "ddp" and meta["config"]["devices"] == "2"
    rows = list(csv.DictReader(open(out / "history.csv")))
    val_n = int(float(rows[-1]["val_n"]))
    # An odd val split (7 images here) makes DistributedSampler pad one copy onto a rank.
    # Gathered over both ranks with that copy dropped, the epoch's val metrics cover exactly
    # the single-process val split, each image once.
    assert ckpt.extra["n_val"] % 2 == 1
    assert val_n == ckpt.extra["n_val"]
    assert 0.0 <= float(rows[-1]["val_auroc"]) <= 1.0
    assert 0.0 <= ckpt.val_metrics["auroc"] <= 1.0 and ckpt.val_metrics["n"] == val_n
    # the gathered accuracy is a count of the val_n images (each once) over val_n
    assert float(rows[-1]["val_acc"]) * val_n == pytest.approx(
        round(float(rows[-1]["val_acc"]) * val_n), abs=1e-6)
    if task == "etiology":
        assert ckpt.labels == ["NORMAL", "BACTERIAL", "VIRAL"]
        assert 0.0 <= float(rows[-1]["val_pneumonia_auroc"]) <= 1.0
        assert 0.0 <= ckpt.val_metrics["class_accuracy"] <= 1.0

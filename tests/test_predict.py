
import pytest

from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.inference.runtime import load_torch
from pneumoscan.models import weights as checkpoint

from .product_checks import examples_check


def test_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not a pneumoscan model"):
        checkpoint.load(tmp_path)


def test_predict_scores_real_images_and_reports_the_bad_one(tiny_run, small_data, tmp_path):
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    images = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))[:5]
    p = load_torch(tiny_run.dir)
    results = p.predict(images[:2] + [str(bad)] + images[2:], batch_size=2)
    assert [r.path for r in results] == images[:2] + [str(bad)] + images[2:]
    assert results[2].error and "broken.jpeg" in results[2].error
    assert results[2].probability is None
    for r in results[:2] + results[3:]:
        assert r.error is None and 0.0 <= r.probability <= 1.0
        expected = "PNEUMONIA" if r.probability >= p.threshold else "NORMAL"
        assert r.label == (None if r.ood.flagged else expected)  # no label when flagged


def test_batching_does_not_change_scores(tiny_run, small_data):
    images = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    p = load_torch(tiny_run.dir)
    one = [r.probability for r in p.predict(images, batch_size=1)]
    many = [r.probability for r in p.predict(images, batch_size=8)]
    assert max(abs(a - b) for a, b in zip(one, many)) < 1e-5


def test_expand_inputs_walks_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpeg").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    out = expand_inputs([str(tmp_path / "a"), str(tmp_path / "empty")])
    assert out == [str(tmp_path / "a" / "x.jpeg"), str(tmp_path / "empty")]


def test_shipped_model_contract():
    folder = checkpoint.resolve(None)
    size_mb = (folder / checkpoint.WEIGHTS).stat().st_size / 2**20
    assert size_mb < 20
    _, ckpt = checkpoint.load(None)
    assert ckpt.model_name == "efficientnet-lite0" and ckpt.extra["weights_dtype"] == "float16"
    assert ckpt.extra["weights_sha256"] == checkpoint.file_sha256(folder / checkpoint.WEIGHTS)
    assert ckpt.val_metrics["sensitivity"] >= ckpt.config["target_sensitivity"]


def test_shipped_model_on_the_full_size_examples():
    check = examples_check(load_torch())
    assert check["examples_n"] == 16
    assert check["examples_pneumonia_found"] == 8  # a screening aid must not miss these
    assert check["examples_right"] >= 12


def test_bf16_option_stays_close_to_fp32(tiny_run, small_data):
    images = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    ref = load_torch(tiny_run.dir).predict(images, batch_size=4)
    fast = load_torch(tiny_run.dir, bf16=True).predict(images, batch_size=4)
    assert [r.path for r in fast] == images
    assert max(abs(a.probability - b.probability) for a, b in zip(ref, fast)) < 0.05

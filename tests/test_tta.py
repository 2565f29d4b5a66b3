"""Test-time augmentation on a real tiny run and real images."""

import json

import numpy as np
import pytest

from pneumoscan.cli import main
from pneumoscan.core.decisions import probabilities_from_logits
from pneumoscan.data.decode import load_many
from pneumoscan.inference import tta
from pneumoscan.inference.runtime import load_torch
from pneumoscan.inference.torch_backend import predict_arrays
from pneumoscan.models import weights as checkpoint


@pytest.fixture(scope="module")
def member(tiny_seeds):
    return tiny_seeds / "seed-0"  # a real 1-epoch 64 px run (conftest), shared with ensembles


@pytest.fixture(scope="module")
def images(small_data):
    paths = sorted(str(p) for p in (small_data / "test").rglob("*.jpeg"))
    arr, ok, _ = load_many(paths, 64, "bilinear")
    assert len(ok) == len(paths) == 12
    return paths, arr


def test_identity_only_equals_plain_prediction(member, images):
    model, ckpt = checkpoint.load(member)
    _, arr = images
    plain = predict_arrays(model, ckpt, arr)
    assert np.array_equal(tta.probabilities(model, ckpt, arr, views=tta.IDENTITY), plain)
    cls = tta.class_probabilities_tta(model, ckpt, arr, views=tta.IDENTITY)
    assert np.array_equal(cls[:, 1], plain)


def test_views_shift_and_zoom_the_pixels(images):
    _, arr = images
    assert tta.view(arr, 0.0, 0.0, 1.0) is arr
    right = tta.view(arr, 0.04, 0.0, 1.0)  # 0.04 * 64 = 3 pixels
    assert right.dtype == np.uint8 and right.shape == arr.shape
    assert np.array_equal(right[:, :, 3:], arr[:, :, :-3])
    assert (right[:, :, :3] == 0).all()  # filled black, as training augmentation fills
    down = tta.view(arr, 0.0, 0.04, 1.0)
    assert np.array_equal(down[:, 3:, :], arr[:, :-3, :])
    zoom = tta.view(arr, 0.0, 0.0, 0.95)
    assert zoom.shape == arr.shape and not np.array_equal(zoom, arr)
    assert (zoom[:, 0, :] == 0).all()  # zooming out leaves a black border


def test_tta_predictor_is_the_mean_over_views(member, images):
    paths, arr = images
    model, ckpt = checkpoint.load(member)
    per_view = [probabilities_from_logits(z, ckpt) for z in tta.view_logits(model, ckpt, arr)]
    assert len(per_view) == len(tta.VIEWS) == 7
    expected = np.mean(per_view, axis=0)
    p = load_torch(member, tta=True)
    # the run has an OOD gate: scores() reuses its forward pass as the identity view
    assert checkpoint.load(member)[1].ood_stats is not None
    probs, ood = p.scores(arr)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert np.isfinite(ood).all()
    got = [r.probability for r in p.predict(paths)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(expected, per_view[0], atol=1e-6)  # the views do change scores


def test_cli_tta_flag(member, small_data, images, capsys):
    paths, arr = images
    model, ckpt = checkpoint.load(member)
    expected = tta.probabilities(model, ckpt, arr[:2])
    assert main(["predict", *paths[:2], "--model", str(member), "--tta",
                 "--format", "json"]) == 0
    got = [r["probability"] for r in json.loads(capsys.readouterr().out)["predictions"]]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert main(["evaluate", "--data", str(small_data), "--model", str(member),
                 "--tta", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] is True and result["n"] == 12

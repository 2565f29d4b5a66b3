"""Site adaptation (adapt.py): BatchNorm statistics and EM prior shift, on real X-rays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pneumoscan.cli import main
from pneumoscan.data.decode import load_many
from pneumoscan.evaluation.metrics import auroc
from pneumoscan.inference.torch_backend import predict_arrays
from pneumoscan.models import weights as checkpoint
from pneumoscan.workflows import adapt


@pytest.fixture(scope="module")
def shipped():
    return checkpoint.load(None)


@pytest.fixture(scope="module")
def test_images(data_dir):
    """40 real test-folder images, 20 per class, and their targets."""
    paths, targets = [], []
    for t, label in enumerate(("NORMAL", "PNEUMONIA")):
        files = sorted((data_dir / "test" / label).glob("*.jpeg"))[::10][:20]
        paths += files
        targets += [t] * len(files)
    images, ok, errors = load_many(paths, 224)
    assert not errors
    return images, np.array(targets)


def test_bn_adaptation_leaves_the_model_untouched_and_moves_the_statistics(shipped,
                                                                           test_images):
    model, ckpt = shipped
    images, _ = test_images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adapt.bn_adapted(model, ckpt, images)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training and not adapted.training
    moved = [k for k, v in adapted.state_dict().items()
             if k.endswith("running_mean") and not torch.allclose(v, before[k])]
    assert len(moved) > 10
    # weights stay as trained: only running statistics change
    for k, v in adapted.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
    p = predict_arrays(adapted, ckpt, images)
    assert p.shape == (len(images),) and np.all((p >= 0) & (p <= 1))
    assert not np.allclose(p, predict_arrays(model, ckpt, images))


def test_bn_adaptation_needs_enough_images(shipped, test_images):
    model, ckpt = shipped
    with pytest.raises(ValueError, match="at least 32 images"):
        adapt.bn_adapted(model, ckpt, test_images[0][:8])


def test_em_keeps_the_ranking_and_follows_the_batch_prevalence(shipped, test_images):
    model, ckpt = shipped
    images, y = test_images
    p = predict_arrays(model, ckpt, images)
    prior = adapt.source_prior(ckpt)
    assert prior == pytest.approx(388 / 522)  # the shipped model's val split
    q, pi = adapt.em_prior_shift(p, prior)
    assert auroc(y, q) == pytest.approx(auroc(y, p))  # a monotone map
    assert np.array_equal(np.argsort(q, kind="stable"), np.argsort(p, kind="stable"))
    # Half the batch is normal: the estimated prevalence drops below the 74% of val, and
    # with it every probability.
    assert pi < prior and np.all(q <= p + 1e-12)
    # A batch of normals only gets a lower prevalence still.
    _, pi_normals = adapt.em_prior_shift(p[y == 0], prior)
    assert pi_normals < pi


def test_em_on_probabilities_that_match_the_prior_changes_little():
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.7
    p = np.where(y, rng.beta(8, 2, 5000), rng.beta(2, 8, 5000))
    # calibrated under prevalence 0.7 by construction of the posterior: mean(p) ~ prior
    q, pi = adapt.em_prior_shift(p, float(p.mean()))
    assert pi == pytest.approx(p.mean(), abs=0.02)
    assert np.max(np.abs(q - p)) < 0.05


def test_unknown_method_is_a_clear_error(shipped, test_images):
    model, ckpt = shipped
    with pytest.raises(ValueError, match="unknown adaptation"):
        adapt.adapt_probabilities(model, ckpt, test_images[0], "tent")


def test_cli_reports_unadapted_beside_adapted(small_data, capsys):
    # small_data's carved train split (~43 real images) is enough for BN statistics
    code = main(["evaluate", "--data", str(small_data), "--split", "train", "--adapt",
                 "bn+em", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["adaptation"]["method"] == "bn+em" and 0 < out["adaptation"]["prior"] < 1
    assert out["unadapted"]["n"] == out["adapted"]["n"] > 32
    main(["evaluate", "--data", str(small_data), "--split", "train", "--format", "json"])
    plain = json.loads(capsys.readouterr().out)
    assert out["unadapted"]["auroc"] == pytest.approx(plain["auroc"])
    assert out["unadapted"]["tp"] == plain["tp"]
    assert main(["evaluate", "--data", str(small_data), "--split", "test", "--adapt",
                 "em"]) == 0
    table = capsys.readouterr().out
    assert "unadapted" in table and "adapted" in table and "prior" in table

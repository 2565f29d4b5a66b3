"""Explanations on real X-rays: geometry and range, sanity checks that the maps mean something
(model randomisation, deletion), the numpy CAM used with ONNX, the model left untouched, CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from scipy.stats import spearmanr

from pneumoscan.cli import main
from pneumoscan.core.decisions import probabilities_from_logits
from pneumoscan.core.preprocessing import Preprocessing
from pneumoscan.data.decode import load_many
from pneumoscan.explain.cam import cam_from_features, normalise
from pneumoscan.explain.explainer import Explainer
from pneumoscan.explain.gradients import (
    attribution_target,
    blank_pixels,
    gradcam,
    occlusion,
    shifted_maps,
    torch_explainer,
)
from pneumoscan.explain.render import save
from pneumoscan.explain.spec import OcclusionSettings
from pneumoscan.inference.runtime import load_torch
from pneumoscan.inference.torch_backend import predict_arrays, predict_logits, torch_predictor
from pneumoscan.models import weights as checkpoint
from pneumoscan.models.registry import create_model, get_spec
from pneumoscan.models.transforms import to_model_input

from .conftest import EXAMPLES

RANDOMISATION_BOUND = 0.3  # mean Spearman rho, trained vs randomised weights (measured ~0.0)


@pytest.fixture(scope="module")
def shipped() -> Explainer:
    return Explainer.from_checkpoint()


@pytest.fixture(scope="module")
def detected_pneumonia(shipped, data_dir):
    """36 pneumonia test images (spread over the folder) the shipped model flags, with maps."""
    paths = sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[::10][:36]
    images, ok, errors = load_many(paths, 224)
    assert not errors
    probs = predict_arrays(shipped.model, shipped.ckpt, images)
    keep = probs >= shipped.ckpt.threshold
    return images[keep], shipped.maps(images[keep]), probs[keep]


def _original_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).size


def _model_state(model: torch.nn.Module) -> dict:
    """Everything explaining must leave as it was: modes, flags, grads, weights, hooks."""
    hooks = {(name, attr): len(value) for name, m in model.named_modules()
             for attr, value in vars(m).items() if "hooks" in attr and isinstance(value, dict)}
    g = torch.nn.modules.module
    global_hooks = [len(getattr(g, a)) for a in dir(g) if a.startswith("_global_")
                    and a.endswith("hooks") and isinstance(getattr(g, a), dict)]
    return {"modes": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [p.grad is None for p in model.parameters()],
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "hooks": hooks, "global_hooks": global_hooks}


def _assert_same_state(before: dict, after: dict) -> None:
    for key in ("modes", "requires_grad", "grads", "hooks", "global_hooks"):
        assert before[key] == after[key], key
    for k, v in before["weights"].items():  # batch-norm running statistics included
        assert torch.equal(v, after["weights"][k]), k
    assert sum(before["hooks"].values()) == 0


def test_maps_on_full_size_originals_keep_their_geometry(shipped):
    paths = [EXAMPLES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg",
             EXAMPLES / "PNEUMONIA" / "person1951_bacteria_4882.jpeg",
             EXAMPLES / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"]
    results = shipped.explain([str(p) for p in paths])
    predictions = torch_predictor(shipped.model, shipped.ckpt).predict([str(p) for p in paths])
    assert len(results) == len(paths)
    for r, pred, path in zip(results, predictions, paths):
        width, height = _original_size(path)
        assert r.error is None and width != height
        assert r.heatmap.shape == r.image.shape == (height, width)
        assert r.heatmap.dtype == np.float32 and np.isfinite(r.heatmap).all()
        assert 0.0 <= r.heatmap.min() and r.heatmap.max() <= 1.0
        assert abs(r.probability - pred.probability) < 1e-6 and r.label == pred.label
    assert all(r.heatmap.max() > 0.9 for r in results if r.label == "PNEUMONIA")


def test_cam_from_features_equals_captum_gradcam(shipped, data_dir):
    """The numpy CAM that ONNX Runtime deployments use (exported `features` output + the
    classifier row) gives captum's Grad-CAM of the torch model on real images."""
    model, ckpt = shipped.model, shipped.ckpt
    assert get_spec(ckpt.model_name).target_layer(model) is model.bn2
    paths = sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:4] + \
        sorted((data_dir / "test" / "NORMAL").glob("*.jpeg"))[:2]
    images, _, _ = load_many(paths, 224)
    with torch.no_grad():  # bn2's output: what an ONNX export returns as `features`
        x = to_model_input(torch.from_numpy(images).unsqueeze(1), ckpt.preprocessing)
        features = model.forward_features(x).numpy()
    weights = model.classifier.weight[0].detach().numpy()
    cams = gradcam(model, ckpt, images)
    assert cams.shape == (6, 7, 7) and cams[:4].max() > 0
    for feat, cam in zip(features, cams):
        np.testing.assert_allclose(cam_from_features(feat, weights), cam, atol=1e-5)

    # and on a full-size original, resized to its geometry in the same way
    path = EXAMPLES / "PNEUMONIA" / "person1954_bacteria_4886.jpeg"
    r = shipped.explain([str(path)])[0]
    orig, _, _ = load_many([path], 224)
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(orig).unsqueeze(1), ckpt.preprocessing)
        feat = model.forward_features(x).numpy()[0]
    height, width = r.heatmap.shape
    np.testing.assert_allclose(cam_from_features(feat, weights, width, height), r.heatmap,
                               atol=1e-5)


def test_model_randomisation_changes_the_maps(shipped, detected_pneumonia):
    """Adebayo et al. 2018: maps that survive randomising the weights explain nothing."""
    images, trained_maps, _ = detected_pneumonia
    images, trained_maps = images[:12], trained_maps[:12]
    torch.manual_seed(0)
    random_model = create_model(shipped.ckpt.model_name, pretrained=False).eval()
    random_maps = torch_explainer(random_model, shipped.ckpt).maps(images)
    rhos = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(trained_maps, random_maps)]
    print(f"model randomisation: mean Spearman rho {np.mean(rhos):.3f} over {len(rhos)} images")
    assert np.isfinite(rhos).all()
    assert np.mean(rhos) < RANDOMISATION_BOUND


def test_deleting_salient_pixels_lowers_pneumonia_probability_more_than_random(
        shipped, detected_pneumonia):
    images, maps, probs = detected_pneumonia
    assert len(images) >= 30
    salient = predict_arrays(shipped.model, shipped.ckpt, blank_pixels(images, maps, 0.1))
    random = predict_arrays(shipped.model, shipped.ckpt,
                            blank_pixels(images, None, 0.1, np.random.default_rng(0)))
    drop_salient, drop_random = np.mean(probs - salient), np.mean(probs - random)
    print(f"deletion (top 10% -> image mean), {len(images)} images: mean probability drop "
          f"{drop_salient:.4f} salient vs {drop_random:.4f} random")
    assert drop_salient > drop_random


def test_blank_pixels_blanks_exactly_the_fraction():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 20, 20), dtype=np.uint8)
    maps = rng.random((2, 20, 20)).astype(np.float32)
    out = blank_pixels(images, maps, 0.1)
    for img, m, o in zip(images, maps, out):
        changed = img != o
        top = m >= np.sort(m.ravel())[-40]
        assert changed.sum() <= 40 and not (changed & ~top).any()
        assert (o[top] == round(float(img.mean()))).all()


def test_shifted_maps_keep_the_region_and_move_it():
    maps = np.zeros((3, 224, 224), np.float32)
    maps[:, 100:140, 30:70] = 1.0
    moved = shifted_maps(maps, np.random.default_rng(0))
    offsets = set()
    for m in moved:
        assert m.sum() == 1600  # the same area (a circular shift loses nothing)
        assert (m * maps[0]).sum() == 0  # moved at least 56 px each way: off the 40 px box
        ys, xs = np.nonzero(m)
        offsets.add((int(ys.min()), int(xs.min())))
    assert len(offsets) > 1  # each image moved its own way


def test_blank_pixels_blur_fill_takes_the_blurred_image_and_keeps_the_rest(data_dir):
    img = load_many([sorted((data_dir / "train" / "PNEUMONIA").iterdir())[0]], 224)[0]
    maps = np.zeros((1, 224, 224), np.float32)
    maps[0, 80:120, 60:100] = 1.0  # 1,600 of 50,176 pixels: inside the top 10%
    out = blank_pixels(img, maps, 0.1, fill="blur")[0]
    changed = out != img[0]
    assert not changed[:40].any()  # outside the top 10% (ties go to the last rows): kept
    box = out[80:120, 60:100].astype(float)
    assert box.std() < img[0, 80:120, 60:100].std()  # detail removed
    assert abs(box.mean() - img[0, 80:120, 60:100].mean()) < 20  # grey level kept, not flat
    with pytest.raises(ValueError, match="fill"):
        blank_pixels(img, maps, 0.1, fill="zero")


@pytest.mark.parametrize("name, labels", [
    ("custom-cnn", ["NORMAL", "PNEUMONIA"]), ("efficientnet-lite0", ["NORMAL", "PNEUMONIA"]),
    ("efficientnet-lite0", ["NORMAL", "BACTERIAL", "VIRAL"])])
def test_model_is_left_exactly_as_found(name, labels, data_dir):
    """Both methods, on a model put in train mode with some weights frozen."""
    outputs = 1 if len(labels) == 2 else len(labels)
    model = create_model(name, pretrained=False, num_outputs=outputs)
    ckpt = checkpoint.Checkpoint(name, labels, Preprocessing(input_size=96), 0.5,
                                 extra={"temperature": 0.8})
    model.train()
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    images, _, _ = load_many(sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:2], 96)
    before = _model_state(model)
    maps = gradcam(model, ckpt, images)
    occ = occlusion(model, ckpt, images[:1], settings=OcclusionSettings(window=32, stride=32))
    explained = torch_explainer(model, ckpt).maps(images)
    _assert_same_state(before, _model_state(model))
    assert maps.shape[0] == 2 and occ.shape == (1, 96, 96) and explained.shape == (2, 96, 96)
    for m in (maps, occ, explained):
        assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1


def test_occlusion_costs_the_stated_forward_passes(data_dir):
    base = create_model("custom-cnn", pretrained=False).eval()
    seen = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, x):
            seen.append(len(x))
            return self.base(x)

    ckpt = checkpoint.Checkpoint("custom-cnn", ["NORMAL", "PNEUMONIA"],
                                 Preprocessing(input_size=64), 0.5)
    images, _, _ = load_many(sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:1], 64)
    settings = OcclusionSettings(window=16, stride=8, batch_size=16)
    maps = occlusion(Counting(), ckpt, images, settings=settings)
    assert sum(seen) == settings.forward_passes(64) == 50
    assert OcclusionSettings().forward_passes(224) == 170
    assert maps.shape == (1, 64, 64) and maps.max() == 1.0


def test_explain_cli_writes_overlays_and_reports_the_bad_file(tmp_path, capsys):
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    good = [EXAMPLES / "PNEUMONIA" / "person1951_bacteria_4882.jpeg",
            EXAMPLES / "NORMAL" / "NORMAL2-IM-1430-0001.jpeg"]
    out = tmp_path / "out"
    code = main(["explain", str(good[0]), str(bad), str(good[1]), "--out", str(out),
                 "--save-npy"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpeg" in captured.err and "not a readable image" in captured.err
    for path in good:
        png = out / f"{path.stem}_gradcam.png"
        assert png.stat().st_size < 300_000
        with Image.open(png) as img:
            assert img.format == "PNG"
        heatmap = np.load(out / f"{path.stem}_gradcam.npy")
        width, height = _original_size(path)
        assert heatmap.shape == (height, width) and heatmap.dtype == np.float32
        assert str(png) in captured.out
    assert len(list(out.iterdir())) == 4


def test_predict_explain_writes_overlays_beside_the_predictions(tmp_path, capsys):
    path = EXAMPLES / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"
    assert main(["predict", str(path), "--explain", str(tmp_path), "--format", "json"]) == 0
    assert "PNEUMONIA" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [f"{path.stem}_gradcam.png"]


def test_unknown_method_is_a_clear_error(shipped):
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        shipped.maps(np.zeros((1, 224, 224), np.uint8), method="lime")


def test_same_file_names_do_not_overwrite(shipped, data_dir, tmp_path):
    path = str(sorted((data_dir / "test" / "NORMAL").glob("*.jpeg"))[0])
    results = shipped.explain([path, path])
    taken: set[str] = set()
    pngs = [save(r, tmp_path, shipped.ckpt.threshold, taken=taken) for r in results]
    stem = Path(path).stem
    assert [Path(p).name for p in pngs] == [f"{stem}_gradcam.png", f"{stem}_gradcam_2.png"]
    assert all(Path(p).is_file() for p in pngs)


# --- a three-class (NORMAL / BACTERIAL / VIRAL) model -------------------------------------

def test_three_class_gradcam_explains_the_pneumonia_decision(etiology_run, small_data):
    """The attributed score is the logit of the stored pneumonia probability 1 - P(NORMAL),
    and its Grad-CAM is the CAM of the classifier rows weighted by that score's gradient."""
    from captum.attr import LayerGradCam

    model, ckpt = checkpoint.load(etiology_run.dir)
    paths = sorted((small_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:3] + sorted(
        (small_data / "test" / "NORMAL").glob("*.jpeg"))[:3]
    images, _, _ = load_many(paths, 64)
    forward, index = attribution_target(model, ckpt, None)
    layer = get_spec(ckpt.model_name).target_layer(model)
    feats = []
    handle = layer.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(images).unsqueeze(1), ckpt.preprocessing)
        log_odds = forward(x)[:, index].double().numpy()
        z = model(x).double()
    handle.remove()
    p = probabilities_from_logits(predict_logits(model, ckpt, images), ckpt)
    np.testing.assert_allclose(1 / (1 + np.exp(-log_odds)), p, atol=1e-5)

    # d log-odds / d z: -1/T for NORMAL, softmax of the pneumonia classes / T for the others;
    # Grad-CAM's channel weights are that times the classifier, averaged over the 2 x 2 map.
    t = ckpt.temperature
    grad = torch.cat([-torch.ones(6, 1, dtype=z.dtype), torch.softmax(z[:, 1:] / t, dim=1)],
                     dim=1) / t
    rows = grad @ model.get_classifier().weight.detach().double()
    expected = torch.einsum("nc,nchw->nhw", rows, feats[0].double()).numpy() / 4
    raw = LayerGradCam(forward, layer).attribute(x, target=index, relu_attributions=False)
    np.testing.assert_allclose(raw.detach()[:, 0].double().numpy(), expected, atol=1e-5)
    maps = gradcam(model, ckpt, images)  # what explain shows: ReLU, scaled to a peak of 1
    assert maps.shape == (6, 2, 2) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps, normalise(expected), atol=1e-4)
    occ = occlusion(model, ckpt, images[:1], settings=OcclusionSettings(window=16, stride=16))
    assert occ.shape == (1, 64, 64) and np.isfinite(occ).all() and occ.max() <= 1.0


def test_three_class_model_equivalent_to_the_shipped_one_gets_its_maps(shipped, data_dir):
    """A 3-class head with logits (0, z, z), z the shipped model's pneumonia logit, has the
    shipped model's pneumonia log-odds up to a constant: its decision maps must be the
    shipped model's (which pass the randomisation and deletion checks above)."""
    import copy

    model = copy.deepcopy(shipped.model)
    head = model.get_classifier()
    three = torch.nn.Linear(head.in_features, 3)
    with torch.no_grad():
        three.weight.copy_(torch.cat([torch.zeros_like(head.weight), head.weight, head.weight]))
        three.bias.copy_(torch.cat([torch.zeros_like(head.bias), head.bias, head.bias]))
    model.classifier = three
    ckpt = copy.deepcopy(shipped.ckpt)
    ckpt.labels = ["NORMAL", "BACTERIAL", "VIRAL"]
    paths = sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:4]
    images, _, _ = load_many(paths, 224)
    expected = gradcam(shipped.model, shipped.ckpt, images)
    assert expected.max() == 1.0
    np.testing.assert_allclose(gradcam(model, ckpt, images), expected, atol=1e-4)


def test_three_class_explain_cli_shows_class_probabilities(etiology_run, small_data, tmp_path,
                                                          capsys):
    paths = [str(sorted((small_data / "test" / label).glob("*.jpeg"))[0])
             for label in ("PNEUMONIA", "NORMAL")]
    results = Explainer.from_checkpoint(etiology_run.dir).explain(paths)
    expected = load_torch(etiology_run.dir).predict(paths)
    for r, e in zip(results, expected):
        assert r.label == e.label in ("NORMAL", "PNEUMONIA", None) and r.etiology == e.etiology
        assert r.ood_flagged == e.ood.flagged and r.warnings == e.warnings
        assert r.class_probabilities == pytest.approx(e.class_probabilities, abs=1e-6)
        assert r.heatmap.shape == r.image.shape and 0 <= r.heatmap.min() <= r.heatmap.max() <= 1
    assert main(["explain", *paths, "--model", str(etiology_run.dir), "--out",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["path", "probability", "label", "p_NORMAL", "p_BACTERIAL", "p_VIRAL",
                      "etiology", "png"]
    first = out.splitlines()[1].split()  # an empty label / etiology cell prints nothing
    cells = [f"{v:.4f}" for v in expected[0].class_probabilities.values()] + [
        c for c in (expected[0].label, expected[0].etiology) if c]
    assert all(c in first for c in cells), (first, cells)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{Path(p).stem}_gradcam.png" for p in paths)

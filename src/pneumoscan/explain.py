"""Heatmaps of what drives a score: Grad-CAM and occlusion sensitivity, on the original image.

Maps are computed at the model input (the image squashed to input_size x input_size) and
resized back to the original width x height, so they lie on the X-ray as it was given.
Every function leaves the model exactly as it found it: the train/eval mode of each module,
requires_grad flags, no hooks (captum removes its own) and no `.grad` written.

What is explained by default is the pneumonia decision: a binary model's logit, and for a
K-class (etiology) model the logit of its pneumonia probability, log(1 - P(NORMAL)) -
log P(NORMAL) at the stored temperature, the score the stored threshold is applied to
(PneumoniaLogOdds). An explicit `target` explains that raw class logit instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import checkpoint
from .calibration import temperature_of
from .models import get_spec
from .predict import Predictor, class_probabilities, probabilities_from_logits
from .transforms import ImageError, load_gray_original, load_many, to_model_input

METHODS = ("gradcam", "occlusion")


@dataclass(frozen=True)
class OcclusionSettings:
    """Occlusion sensitivity (Kermany et al. 2018): slide a gray square over the input and
    record how much the target logit drops. In model-input pixels; the square is filled
    with the image's mean."""

    window: int = 32
    stride: int = 16
    batch_size: int = 32  # occluded copies per forward pass

    def forward_passes(self, input_size: int) -> int:
        """Forward passes per image: one per window position plus the unoccluded input."""
        positions = (input_size - self.window) // self.stride + 1
        return positions * positions + 1


@dataclass
class Explanation:
    path: str
    method: str
    target: int | None = None  # None: the pneumonia decision (module docstring)
    heatmap: np.ndarray | None = None  # (H, W) float32 in [0, 1], the original geometry
    image: np.ndarray | None = None  # (H, W) uint8 gray original, for display
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    # As in predict.Prediction: every class's probability; K-class models' likelier etiology.
    class_probabilities: dict[str, float] | None = None
    etiology: str | None = None


class PneumoniaLogOdds(nn.Module):
    """A K-class model's pneumonia log-odds as one (N, 1) output: logsumexp of the non-NORMAL
    logits / T minus the NORMAL logit / T = logit(1 - P(NORMAL)), the probability
    predict.probabilities_from_logits compares with the stored threshold. Holds the model
    without changing it."""

    def __init__(self, model: nn.Module, normal: int, temperature: float):
        super().__init__()
        self.model, self.normal, self.temperature = model, normal, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x).float() / self.temperature
        sick = torch.cat([z[:, :self.normal], z[:, self.normal + 1:]], dim=1)
        return (torch.logsumexp(sick, dim=1) - z[:, self.normal])[:, None]


def attribution_target(model: nn.Module, ckpt: checkpoint.Checkpoint, target: int | None
                       ) -> tuple[nn.Module, int]:
    """(forward function, output index) to attribute: `target` is a raw logit index; None is
    the pneumonia decision (a binary model's logit 0, a K-class model's PneumoniaLogOdds)."""
    if target is not None or len(ckpt.labels) == 2:
        return model, 0 if target is None else target
    return PneumoniaLogOdds(model, ckpt.labels.index("NORMAL"), temperature_of(ckpt)), 0


@contextmanager
def _eval_mode(model: nn.Module, grad: bool = True):
    """Eval mode (gradients on if `grad`); afterwards every module's own mode is restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield
    finally:
        for m, training in modes:
            m.training = training


def _inputs(model: nn.Module, ckpt: checkpoint.Checkpoint, images: np.ndarray) -> torch.Tensor:
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(device)
    return to_model_input(x, ckpt.preprocessing)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each (h, w) map of a (N, h, w) stack to [0, 1] by its maximum (negatives -> 0);
    an all-zero map stays zero."""
    maps = np.clip(np.nan_to_num(maps.astype(np.float32)), 0, None)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def resize_map(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of one (h, w) map to (height, width), kept in [0, 1] (numpy + PIL only,
    so the ONNX path gives the same pixels as the torch path)."""
    img = Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32), mode="F")
    out = np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def gradcam(model: nn.Module, ckpt: checkpoint.Checkpoint, images: np.ndarray,
            target: int | None = None) -> np.ndarray:
    """Grad-CAM (captum's LayerGradCam) on the registry's target layer.

    Args:
        images: (N, S, S) uint8 gray model inputs (S = the checkpoint's input_size).
        target: None explains the pneumonia decision (the binary logit; a K-class model's
            pneumonia log-odds); an int explains that raw logit (a class index).

    Returns:
        (N, h, w) float32 maps in [0, 1] at the target layer's resolution (7 x 7 for
        EfficientNet-Lite0 at 224 px).

    Examples:
        >>> model, ckpt = checkpoint.load(None)
        >>> gradcam(model, ckpt, np.zeros((1, 224, 224), np.uint8)).shape
        (1, 7, 7)
    """
    from captum.attr import LayerGradCam

    layer = get_spec(ckpt.model_name).target_layer(model)
    forward, index = attribution_target(model, ckpt, target)
    with _eval_mode(model):
        attr = LayerGradCam(forward, layer).attribute(_inputs(model, ckpt, images),
                                                      target=index, relu_attributions=True)
    return normalise(attr.detach()[:, 0].float().cpu().numpy())


def occlusion(model: nn.Module, ckpt: checkpoint.Checkpoint, images: np.ndarray,
              target: int | None = None, settings: OcclusionSettings = OcclusionSettings()
              ) -> np.ndarray:
    """Occlusion sensitivity (captum's Occlusion): (N, S, S) uint8 model inputs -> (N, S, S)
    float32 maps in [0, 1]; a pixel's value is the mean drop of the target (as in gradcam)
    when a window covering it is filled with the image mean (rises count as 0).
    Costs settings.forward_passes(S) forward passes per image."""
    from captum.attr import Occlusion

    forward, index = attribution_target(model, ckpt, target)
    maps = []
    with _eval_mode(model):
        for i in range(len(images)):
            x = _inputs(model, ckpt, images[i:i + 1])
            c = x.shape[1]
            attr = Occlusion(forward).attribute(
                x, sliding_window_shapes=(c, settings.window, settings.window),
                strides=(c, settings.stride, settings.stride), baselines=float(x.mean()),
                target=index, perturbations_per_eval=settings.batch_size)
            maps.append(attr.detach()[0, 0].float().cpu().numpy())
    size = ckpt.preprocessing.input_size
    return normalise(np.stack(maps)) if maps else np.zeros((0, size, size), np.float32)


def cam_from_features(features: np.ndarray, weights: np.ndarray, width: int | None = None,
                      height: int | None = None) -> np.ndarray:
    """Class activation map from a feature map and the linear head's weights, in numpy only:
    for a model whose head is global-average-pool + linear (EfficientNet-Lite: bn2 output ->
    pool -> classifier) this equals Grad-CAM, because the logit's gradient at every
    feature-map position is weights[c] / (h * w). This is how an ONNX Runtime deployment
    that exports the `features` output gets heatmaps without PyTorch.

    Args:
        features: (C, h, w) the target layer's output for one image.
        weights: (C,) the classifier row of the target logit (`classifier.weight[target]`);
            for a K-class model's pneumonia log-odds, the gradient of the log-odds w.r.t.
            the logits times the classifier weight (a per-image row; see tests).
        width, height: the original image size to resize to; None keeps (h, w).

    Returns:
        (h, w) or (height, width) float32 map in [0, 1].

    Examples:
        >>> cam_from_features(np.ones((2, 7, 7)), np.array([1.0, -0.5])).max()
        1.0
    """
    cam = normalise(np.tensordot(weights, features, axes=1)[None])[0]
    return cam if width is None else resize_map(cam, width, height)


class Explainer(Predictor):
    """A loaded model plus its checkpoint contract, explaining images. A Predictor (its
    labels, class probabilities and etiology come from the same code) that, unlike one, does
    not put the model in eval mode or channels-last when constructed.

    Examples:
        >>> e = Explainer.from_checkpoint()          # the shipped model
        >>> r = e.explain(["examples/PNEUMONIA/person1946_bacteria_4874.jpeg"])[0]
        >>> r.heatmap.shape == r.image.shape, r.label
        (True, 'PNEUMONIA')
    """

    def __init__(self, model: nn.Module, ckpt: checkpoint.Checkpoint):
        self.model, self.ckpt, self.bf16 = model, ckpt, False

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None) -> Explainer:
        p = Predictor.from_checkpoint(path)  # the same model set-up as prediction
        if p.model is None:
            raise checkpoint.CheckpointError(
                f"{path}: an ensemble has no single Grad-CAM target layer; explain one of "
                f"its member runs instead")
        return cls(p.model, p.ckpt)

    def maps(self, images: np.ndarray, method: str = "gradcam", target: int | None = None,
             occlusion_settings: OcclusionSettings = OcclusionSettings()) -> np.ndarray:
        """(N, S, S) uint8 model inputs -> (N, S, S) float32 maps in [0, 1]."""
        size = self.ckpt.preprocessing.input_size
        maps = self._native_maps(images, method, target, occlusion_settings)
        return np.stack([resize_map(m, size, size) for m in maps]) if len(maps) else \
            np.zeros((0, size, size), np.float32)

    def _native_maps(self, images, method, target, occlusion_settings) -> np.ndarray:
        """Maps at the method's own resolution (the target layer's for Grad-CAM), so that
        each is resized only once, straight to its image's geometry."""
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
        if method == "occlusion":
            return occlusion(self.model, self.ckpt, images, target, occlusion_settings)
        return gradcam(self.model, self.ckpt, images, target)

    def iter_explain(self, paths: list[str], method: str = "gradcam", target: int | None = None,
                     batch_size: int = 16, progress: bool = False,
                     occlusion_settings: OcclusionSettings = OcclusionSettings(),
                     ) -> Iterator[Explanation]:
        """One Explanation per path, in order, yielded as soon as computed; an unreadable
        file gets `error` and no map."""
        prep = self.ckpt.preprocessing
        bar = None
        if progress:
            from tqdm import tqdm

            cost = (f", {occlusion_settings.forward_passes(prep.input_size)} forward passes "
                    f"per image" if method == "occlusion" else "")
            bar = tqdm(total=len(paths), unit="image", desc=f"{method}{cost}")
        if method == "occlusion":
            batch_size = 1  # seconds per image: let the bar move per image
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            arr, ok, errors = load_many(chunk, prep.input_size, prep.interpolation,
                                          storage_quality=prep.storage_quality)
            maps = self._native_maps(arr, method, target, occlusion_settings)
            with _eval_mode(self.model, grad=False):  # predict_logits leaves it in eval mode
                logits = self.logits(arr)
            scores = zip(maps, probabilities_from_logits(logits, self.ckpt),
                         class_probabilities(logits, self.ckpt))
            found = dict(zip(ok, scores))
            for j, path in enumerate(chunk):
                yield self._one(path, method, target, errors.get(j),
                                *found.get(j, (None, None, None)))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()

    def explain(self, paths: list[str], method: str = "gradcam", **kwargs) -> list[Explanation]:
        return list(self.iter_explain(paths, method, **kwargs))

    def _one(self, path: str, method: str, target: int | None, error: str | None, heatmap,
             probability, class_probs) -> Explanation:
        e = Explanation(str(path), method, target)
        if error is not None:
            e.error = (f"{path}: folder holds no image files" if Path(path).is_dir() else error)
            return e
        try:
            e.image = load_gray_original(path)
        except ImageError as err:
            e.error = str(err)
            return e
        height, width = e.image.shape
        e.heatmap = resize_map(heatmap, width, height)
        e.probability = float(probability)
        e.label = self.label_of(probability)
        e.class_probabilities = dict(zip(self.ckpt.labels, map(float, class_probs)))
        e.etiology = self.etiology_of(class_probs)
        return e


# ------------------------------------------------------------------------------ output files

_TITLES = {"gradcam": "Grad-CAM", "occlusion": "occlusion sensitivity"}


def render(e: Explanation, threshold: float, out: Path, width_in: float = 5.0,
           dpi: int = 100) -> None:
    """The gray X-ray with the heatmap over it. The heatmap's opacity grows with its value
    (up to 0.55), so unimportant regions show the plain X-ray."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    height, width = e.image.shape
    cmap = colormaps["turbo"]
    fig = Figure(figsize=(width_in, width_in * height / width * 0.85 + 0.7))
    ax = fig.add_subplot()
    ax.imshow(e.image, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    ax.imshow(e.heatmap, cmap=cmap, vmin=0, vmax=1, alpha=0.55 * e.heatmap,
              interpolation="antialiased")
    ax.set_axis_off()
    classes = ("" if e.etiology is None else "likelier etiology " + e.etiology + ": " + ", ".join(
        f"{k} {v:.3f}" for k, v in e.class_probabilities.items()) + "\n")
    ax.set_title(f"{e.label}: p(pneumonia) = {e.probability:.3f} (threshold {threshold:.3f})\n"
                 f"{classes}{_TITLES[e.method]} · {Path(e.path).name}", fontsize=9)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("relative importance", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")


def heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 4) uint8 RGBA layer to lay over the X-ray, with the same
    colours and value-dependent opacity as `render` (the web page's overlay)."""
    from matplotlib import colormaps

    rgba = colormaps["turbo"](np.clip(heatmap, 0.0, 1.0))
    rgba[..., 3] = 0.55 * heatmap
    return np.round(rgba * 255).astype(np.uint8)


def save(e: Explanation, out_dir: str | Path, threshold: float, save_npy: bool = False,
         taken: set[str] | None = None) -> Path:
    """Write <stem>_<method>.png (and .npy, the float32 map on the original geometry) into
    out_dir; returns the PNG path. `taken` holds names already written this run, so two
    inputs with the same file name do not overwrite each other."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem, n = f"{Path(e.path).stem}_{e.method}", 1
    name = stem
    while taken is not None and name in taken:
        n += 1
        name = f"{stem}_{n}"
    if taken is not None:
        taken.add(name)
    png = out_dir / f"{name}.png"
    render(e, threshold, png)
    if save_npy:
        np.save(out_dir / f"{name}.npy", e.heatmap.astype(np.float32))
    return png


# --------------------------------------------------------------------------- sanity checks

def blank_pixels(images: np.ndarray, maps: np.ndarray | None, fraction: float = 0.1,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The deletion check's inputs: copies of (N, S, S) uint8 images whose `fraction` most
    salient pixels by `maps` (N, S, S) are set to the image's mean; with maps=None, that
    fraction of pixels chosen at random by `rng` instead."""
    out = images.copy()
    flat = out.reshape(len(out), -1)
    k = int(round(fraction * flat.shape[1]))
    for i, row in enumerate(flat):
        if maps is None:
            idx = rng.choice(row.size, k, replace=False)
        else:
            idx = np.argsort(maps[i].ravel(), kind="stable")[-k:]
        row[idx] = np.uint8(round(float(images[i].mean())))
    return out

"""Heatmaps by gradients (torch, captum; the training extra): Grad-CAM and occlusion sensitivity.

Every function leaves the model exactly as it found it: the train/eval mode of each module,
requires_grad flags, no hooks (captum removes its own) and no `.grad` written.

What is explained by default is the pneumonia decision: a binary model's logit, and for a
K-class (etiology) model the logit of its pneumonia probability, log(1 - P(NORMAL)) -
log P(NORMAL) at the stored temperature, the score the stored threshold is applied to
(PneumoniaLogOdds). An explicit `target` explains that raw class logit instead.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from ..core.contract import Checkpoint
from ..inference.predictor import Predictor
from ..inference.torch_backend import TorchBackend
from ..models.registry import get_spec
from ..models.transforms import to_model_input
from .cam import normalise
from .explainer import Explainer
from .spec import OcclusionSettings


class PneumoniaLogOdds(nn.Module):
    """A K-class model's pneumonia log-odds as one (N, 1) output: logsumexp of the non-NORMAL
    logits / T minus the NORMAL logit / T = logit(1 - P(NORMAL)), the probability
    core.decisions.probabilities_from_logits compares with the stored threshold. Holds the model
    without changing it."""

    def __init__(self, model: nn.Module, normal: int, temperature: float):
        super().__init__()
        self.model, self.normal, self.temperature = model, normal, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x).float() / self.temperature
        sick = torch.cat([z[:, :self.normal], z[:, self.normal + 1:]], dim=1)
        return (torch.logsumexp(sick, dim=1) - z[:, self.normal])[:, None]


def attribution_target(model: nn.Module, ckpt: Checkpoint, target: int | None
                       ) -> tuple[nn.Module, int]:
    """(forward function, output index) to attribute: `target` is a raw logit index; None is
    the pneumonia decision (a binary model's logit 0, a K-class model's PneumoniaLogOdds)."""
    if target is not None or ckpt.binary:
        return model, 0 if target is None else target
    return PneumoniaLogOdds(model, ckpt.labels.index("NORMAL"), ckpt.temperature), 0


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


def _inputs(model: nn.Module, ckpt: Checkpoint, images: np.ndarray) -> torch.Tensor:
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(device)
    return to_model_input(x, ckpt.preprocessing)


def gradcam(model: nn.Module, ckpt: Checkpoint, images: np.ndarray,
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
        >>> model, ckpt = pneumoscan.models.weights.load(None)
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


def occlusion(model: nn.Module, ckpt: Checkpoint, images: np.ndarray,
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


# --------------------------------------------------------------------------- sanity checks

FILLS = ("mean", "blur")
BLUR_SIGMA = 8.0  # pixels of the model input: wider than a rib, so no local detail survives


def blank_pixels(images: np.ndarray, maps: np.ndarray | None, fraction: float = 0.1,
                 rng: np.random.Generator | None = None, fill: str = "mean") -> np.ndarray:
    """The deletion check's inputs: copies of (N, S, S) uint8 images whose `fraction` most
    salient pixels by `maps` (N, S, S) are replaced; with maps=None, that fraction of pixels
    chosen at random by `rng` instead. fill "mean": the image's mean grey (flat patches, which
    a chest model may read as opacity); "blur": the same pixels of the image under a Gaussian
    blur of BLUR_SIGMA, which removes detail without adding edges."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, not {fill!r}")
    out = images.copy()
    flat = out.reshape(len(out), -1)
    k = int(round(fraction * flat.shape[1]))
    for i, row in enumerate(flat):
        if maps is None:
            idx = rng.choice(row.size, k, replace=False)
        else:
            idx = np.argsort(maps[i].ravel(), kind="stable")[-k:]
        if fill == "mean":
            row[idx] = np.uint8(round(float(images[i].mean())))
        else:
            blurred = Image.fromarray(images[i]).filter(ImageFilter.GaussianBlur(BLUR_SIGMA))
            row[idx] = np.asarray(blurred).ravel()[idx]
    return out


def shifted_maps(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each (S, S) map moved by a random circular shift of at least S/4 in each axis: a
    deletion baseline that blanks a region of the salient region's very shape and area
    somewhere else (blanking random scattered pixels is speckle, which a chest model may
    read as disease)."""
    s = maps.shape[-1]
    out = np.empty_like(maps)
    for i, m in enumerate(maps):
        dy, dx = rng.integers(s // 4, s - s // 4 + 1, size=2)
        out[i] = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
    return out


def torch_explainer(model: nn.Module, ckpt: Checkpoint) -> Explainer:
    """An Explainer of a torch model that, unlike a Predictor's, is not put in eval mode or
    channels-last when constructed and whose modes every call restores."""
    return Explainer(Predictor(TorchBackend(model, ckpt, prepare=False), ckpt))

"""Pixels to model input and training augmentation (torch); decoding is data/decode.py."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..core.preprocessing import Preprocessing


def to_model_input(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 gray batch (B, 1, H, W) -> normalised float (B, C, H, W), channels-last; with
    `prep.smoothing` > 0, Gaussian-smoothed after the normalisation (inside every exported
    graph too, so the browser and ONNX Runtime smooth exactly as training did)."""
    x = x.float().div_(255.0).sub_(prep.mean).div_(prep.std)
    if prep.smoothing > 0:
        x = gaussian_smooth(x, prep.smoothing)
    return x.expand(-1, prep.channels, -1, -1).contiguous(memory_format=torch.channels_last)


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) float -> the same, convolved with a Gaussian of `sigma` pixels (separable,
    radius ceil(3 sigma), reflected borders: a flat image stays flat)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


class AcquisitionJitter:
    """With probability `p`, re-acquire a uint8 (1, H, W) image as another site might have:
    each of exposure (gamma 0.7-1.4), resolution (down to 35-90% of the side and back),
    blur (Gaussian sigma 0.3-1.2) and JPEG storage (quality 30-95) applied independently with
    probability 1/2. The 224 px training copies are q75 JPEGs while users send full-size
    originals without that texture (docs/experiments.md, R5): varying resolution, blur and
    compression within each class takes the storage texture away as a cue. Random draws come
    from torch's generator, so `seed_everything` makes runs repeatable."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return x
        u = torch.rand(8).tolist()
        img = Image.fromarray(x[0].numpy())
        w, h = img.size
        if u[0] < 0.5:
            gamma = float(np.exp(-0.357 + 0.694 * u[1]))  # 0.70 .. 1.40
            lut = [round(255.0 * (i / 255.0) ** gamma) for i in range(256)]
            img = img.point(lut)
        if u[2] < 0.5:
            s = 0.35 + 0.55 * u[3]
            small = img.resize((max(2, round(w * s)), max(2, round(h * s))),
                               Image.Resampling.BILINEAR)
            img = small.resize((w, h), Image.Resampling.BILINEAR)
        if u[4] < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(0.3 + 0.9 * u[5]))
        if u[6] < 0.5:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=int(30 + 65 * u[7]))
            buf.seek(0)
            img = Image.open(buf).convert("L")
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).unsqueeze(0)


def train_augmentation(rotation: float, translate: float, zoom: float, brightness: float,
                       contrast: float, hflip: bool, degrade: float = 0.0,
                       crop_aspect: float = 0.0, size: int = 224, acquisition: float = 0.0,
                       crop_scale: float = 0.75):
    """Per-image augmentation on a uint8 (1, H, W) tensor, as the original project's Keras
    ImageDataGenerator: small rotations, shifts, zoom, brightness/contrast; with probability
    `degrade`, a Gaussian blur then a JPEG re-compression. Sharpness and JPEG detail separate
    the classes in train (pneumonia originals are smaller and blurrier) while test normals are
    blurrier than train normals (docs/gap.md): degrading both classes alike removes the cue.
    With `crop_aspect` a > 0, first a random resized crop (`crop_scale` to 100% of the area,
    aspect ratio 1/(1+a) to 1+a, back to size x size): framing and the aspect ratio squashed
    into the square copies differ between the classes in train and between train and test normals
    (docs/gap.md). With `acquisition` > 0, last, AcquisitionJitter with that probability."""
    from torchvision.transforms import v2

    ops = []
    if crop_aspect > 0:
        ops.append(v2.RandomResizedCrop(size, scale=(crop_scale, 1.0),
                                        ratio=(1 / (1 + crop_aspect), 1 + crop_aspect)))
    ops += [v2.RandomAffine(degrees=rotation, translate=(translate, translate),
                           scale=(1 - zoom, 1 + zoom)),
            v2.ColorJitter(brightness=brightness, contrast=contrast)]
    if degrade > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=7, sigma=(0.1, 1.5)),
                                   v2.JPEG(quality=(30, 90))], p=degrade))
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if acquisition > 0:
        ops.append(AcquisitionJitter(acquisition))
    return v2.Compose(ops)

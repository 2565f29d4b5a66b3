"""The only place pixels are decoded, resized, normalised and augmented."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input; stored in every checkpoint and read back from it."""

    input_size: int = 224
    mean: float = 0.5
    std: float = 0.5
    interpolation: str = "bilinear"
    resize: str = "squash"  # the whole image, aspect ratio not kept (as the dataset copies)
    channels: int = 3  # gray repeated to this many channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)


def _to_gray8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit gray. 16-bit and float images are stretched over their own range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(a).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L")


def load_gray(path: str | Path | BinaryIO, size: int, interpolation: str = "bilinear",
              name: str | None = None) -> np.ndarray:
    """Decode an image file (a path or a binary file object, e.g. an upload held in memory)
    to a (size, size) uint8 gray array, or raise ImageError naming it (`name` if given)."""
    # Decode at reduced DCT scale when the image is much larger than needed.
    gray = _decode_gray(path, name, draft=(size * 2, size * 2))
    return np.asarray(gray.resize((size, size), _RESAMPLE[interpolation]), dtype=np.uint8)


def load_gray_original(path: str | Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """Decode an image file to a uint8 gray array at its own (height, width), e.g. to show a
    heatmap on the original geometry; ImageError as load_gray."""
    return np.asarray(_decode_gray(path, name, draft=None), dtype=np.uint8)


def _decode_gray(path, name: str | None, draft: tuple[int, int] | None) -> Image.Image:
    if name is None:
        name = str(path) if isinstance(path, str | Path) else getattr(path, "name", "<upload>")
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and draft:
                img.draft("L", draft)
            img = ImageOps.exif_transpose(img)
            gray = _to_gray8(img)
            if gray.width < 2 or gray.height < 2:
                raise ImageError(f"{name}: image is {gray.width}x{gray.height} pixels, too small")
            gray.load()
            return gray
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: cannot decode image ({e})") from None


def load_many(paths, size: int, interpolation: str = "bilinear", threads: int = 4):
    """Decode many files in parallel (PIL releases the GIL while decoding).

    Returns (array of shape (N_ok, size, size) uint8, list of ok indices,
    {index: error message} for the files that failed).
    """
    def one(p):
        try:
            return load_gray(p, size, interpolation)
        except ImageError as e:
            return e

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(one, paths))
    ok = [i for i, r in enumerate(results) if not isinstance(r, ImageError)]
    errors = {i: str(r) for i, r in enumerate(results) if isinstance(r, ImageError)}
    arr = np.stack([results[i] for i in ok]) if ok else np.zeros((0, size, size), np.uint8)
    return arr, ok, errors


def to_model_input(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 gray batch (B, 1, H, W) -> normalised float (B, C, H, W), channels-last."""
    x = x.float().div_(255.0).sub_(prep.mean).div_(prep.std)
    return x.expand(-1, prep.channels, -1, -1).contiguous(memory_format=torch.channels_last)


def train_augmentation(rotation: float, translate: float, zoom: float, brightness: float,
                       contrast: float, hflip: bool):
    """Per-image augmentation on a uint8 (1, H, W) tensor, as the original project's Keras
    ImageDataGenerator: small rotations, shifts, zoom, brightness/contrast."""
    from torchvision.transforms import v2

    ops = [v2.RandomAffine(degrees=rotation, translate=(translate, translate),
                           scale=(1 - zoom, 1 + zoom)),
           v2.ColorJitter(brightness=brightness, contrast=contrast)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops)

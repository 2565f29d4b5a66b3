"""The only place pixels are decoded: JPEG, PNG and DICOM files to a uint8 gray array, with the
checks that keep a bad or hostile file from getting further (size, format, decompression
bombs). numpy, Pillow and pydicom only: the inference install decodes with this."""

from __future__ import annotations

import errno
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import ImageError
from . import dicom_pixels

log = logging.getLogger(__name__)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}

# Largest image accepted, checked from the header before any pixel is decoded (a
# decompression bomb declares a huge size in a tiny file). PIL's own guard, at twice its
# MAX_IMAGE_PIXELS, still applies above this; pass max_pixels to load_gray to go lower.
MAX_PIXELS = 100_000_000

# (ImageError lives in core.errors, so that any layer can raise it; it is re-exported here.)
__all__ = ["MAX_PIXELS", "ImageError", "declared_pixels", "is_dicom", "load_gray",
           "load_gray_original", "load_many", "store_as_jpeg"]


def _to_gray8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit gray. 16-bit and float images are stretched over their own range."""
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return _stretch16(img)
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(a).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L")


def _stretch16(img: Image.Image) -> Image.Image:
    """A 16-bit image stretched over its own range to 8 bits through a 65,536-entry table:
    the float32 arithmetic of the I/F path on each value, done by Pillow in C without a
    numpy or float copy of the image (a 100 Mpx 16-bit PNG took 1.5 GB that way)."""
    lo, hi = img.getextrema()
    if hi <= lo:
        return Image.new("L", img.size, 0)
    table = (np.arange(65536, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return img.convert("I").point(np.round(np.clip(table, 0, 255)).astype(np.uint8).tolist(),
                                  "L")


def is_dicom(path: str | Path | BinaryIO) -> bool:
    """True when the content starts like a DICOM Part 10 file ('DICM' after the 128-byte
    preamble); the file name is not trusted. File objects are left at their position."""
    try:
        if isinstance(path, str | Path):
            with open(path, "rb") as f:
                head = f.read(132)
        else:
            pos = path.tell()
            head = path.read(132)
            path.seek(pos)
    except (OSError, ValueError):
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def store_as_jpeg(gray: Image.Image, quality: int) -> Image.Image:
    """One JPEG encode-decode round trip of an 8-bit gray image (Preprocessing.storage_quality)."""
    buf = io.BytesIO()
    gray.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return img.convert("L")


def load_gray(path: str | Path | BinaryIO, size: int, interpolation: str = "bilinear",
              name: str | None = None, max_pixels: int = MAX_PIXELS,
              storage_quality: int = 0) -> np.ndarray:
    """Decode an image file (a path or a binary file object, e.g. an upload held in memory)
    to a (size, size) uint8 gray array, or raise ImageError naming it (`name` if given).

    Args:
        path: a file path or binary file object; DICOM is recognised by content.
        size: output side in pixels.
        interpolation: 'bilinear' or 'bicubic'.
        name: how the file is named in errors (default: the path).
        max_pixels: refuse images declaring more pixels than this, before decoding them.
        storage_quality: > 0: a JPEG round trip at this quality after the resize.

    Examples:
        >>> load_gray("examples/NORMAL/NORMAL2-IM-1427-0001.jpeg", 224).shape
        (224, 224)
    """
    # Decode at reduced DCT scale when the image is much larger than needed.
    gray = _decode_gray(path, name, (size * 2, size * 2), max_pixels)
    gray = gray.resize((size, size), _RESAMPLE[interpolation])
    if storage_quality > 0:
        gray = store_as_jpeg(gray, storage_quality)
    return np.asarray(gray, dtype=np.uint8)


def load_gray_original(path: str | Path | BinaryIO, name: str | None = None,
                       max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to a uint8 gray array at its own (height, width), e.g. to show a
    heatmap on the original geometry; ImageError as load_gray."""
    return np.asarray(_decode_gray(path, name, None, max_pixels), dtype=np.uint8)


def _check_file(path: Path, name: str) -> None:
    """What a path is when it is no image file: a folder (folders are expanded to their
    images before decoding, so one that arrives here holds none or cannot be read), or a
    FIFO, socket or device (opening a FIFO blocks until a writer comes: never open one)."""
    if path.is_dir():
        try:
            os.scandir(path).close()
        except PermissionError:
            raise ImageError(f"{name}: unreadable folder (permission denied), skipped") from None
        except OSError as e:
            raise ImageError(f"{name}: unreadable folder ({e.strerror}), skipped") from None
        raise ImageError(f"{name}: folder holds no image files")
    if path.exists() and not path.is_file():
        raise ImageError(f"{name}: not a regular file (a FIFO, socket or device)")


def _decode_gray(path, name: str | None, draft: tuple[int, int] | None,
                 max_pixels: int) -> Image.Image:
    if name is None:
        name = str(path) if isinstance(path, str | Path) else getattr(path, "name", "<upload>")
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    try:
        if isinstance(path, str | Path):
            _check_file(Path(path), name)
        if isinstance(path, str | Path) and Path(path).is_file() and Path(path).stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
        if is_dicom(path) or (isinstance(path, str | Path) and Path(path).suffix.lower() == ".dcm"):
            gray = dicom_pixels.to_gray8(path, name, max_pixels)
        else:
            # (warnings.catch_warnings is not thread-safe, and load_many decodes in threads:
            # PIL's DecompressionBombWarning above 89 Mpx is left as it is.)
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise ImageError(f"{name}: image too large ({img.width}x{img.height} "
                                     f"pixels, limit {max_pixels})")
                if img.format == "JPEG" and draft:
                    img.draft("L", draft)
                img = ImageOps.exif_transpose(img)
                gray = _to_gray8(img)
                gray.load()
        if gray.width < 2 or gray.height < 2:
            raise ImageError(f"{name}: image is {gray.width}x{gray.height} pixels, too small")
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
        if getattr(e, "errno", None) == errno.ELOOP:
            raise ImageError(f"{name}: symbolic link loop") from None
        raise ImageError(f"{name}: cannot decode image ({e})") from None
    except RecursionError:  # e.g. a DICOM of 50,000 nested sequences
        raise ImageError(f"{name}: cannot decode: its structure is nested too deeply") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image") from None
    except Exception as e:  # noqa: BLE001 - whatever a codec raises on one file is that
        # file's error, never the batch's, the request's or the training run's. The type
        # only: a DICOM library's message may quote a header value.
        log.debug("decoding %s failed", name, exc_info=True)
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__})") from None


def load_many(paths, size: int, interpolation: str = "bilinear", threads: int = 4,
              max_pixels: int = MAX_PIXELS, storage_quality: int = 0):
    """Decode many files in parallel (PIL releases the GIL while decoding).

    Returns (array of shape (N_ok, size, size) uint8, list of ok indices,
    {index: error message} for the files that failed).
    """
    def one(p):
        try:
            return load_gray(p, size, interpolation, max_pixels=max_pixels,
                             storage_quality=storage_quality)
        except ImageError as e:
            return e

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(one, paths))
    ok = [i for i, r in enumerate(results) if not isinstance(r, ImageError)]
    errors = {i: str(r) for i, r in enumerate(results) if isinstance(r, ImageError)}
    arr = np.stack([results[i] for i in ok]) if ok else np.zeros((0, size, size), np.uint8)
    return arr, ok, errors


def declared_pixels(source: BinaryIO) -> int | None:
    """The pixel count an image's header declares (width x height; DICOM rows x columns x
    frames x samples), read without decoding; None when it cannot be known cheaply (a deflated
    DICOM must be inflated first) or the header is unreadable. The file object is left where
    it was. For scheduling only: decoding checks the limits itself."""
    pos = source.tell()
    try:
        if is_dicom(source):
            return dicom_pixels.declared_pixels(source)
        with Image.open(source) as img:
            return img.width * img.height
    except Exception:  # noqa: BLE001 - unreadable: decoding reports why
        return None
    finally:
        source.seek(pos)

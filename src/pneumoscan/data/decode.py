"""The only place pixels are decoded: JPEG, PNG and DICOM files to a uint8 gray array, with the
checks that keep a bad or hostile file from getting further (size, format, decompression
bombs). numpy, Pillow and pydicom only: the inference install decodes with this."""

from __future__ import annotations

import errno
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}

# Largest image accepted, checked from the header before any pixel is decoded (a
# decompression bomb declares a huge size in a tiny file). PIL's own guard, at twice its
# MAX_IMAGE_PIXELS, still applies above this; pass max_pixels to load_gray to go lower.
MAX_PIXELS = 100_000_000

# The only DICOM tags read: the pixel data and what is needed to display it. Patient and
# study tags are never parsed, so they cannot reach a message, a warning, a log or an output.
_DICOM_TAGS = [
    "SpecificCharacterSet", "Modality", "SamplesPerPixel", "PhotometricInterpretation",
    "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PixelPaddingValue", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence",
    "VOILUTSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FloatPixelData",
    "DoubleFloatPixelData", "PixelData"]


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


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


def _dicom_to_gray8(path: str | Path | BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """One DICOM frame -> 8-bit gray, displayed as a radiologist's viewer would: Modality LUT
    (rescale slope/intercept), then VOI LUT or window, then MONOCHROME1 inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=True, specific_tags=_DICOM_TAGS)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
        raise ImageError(f"{name}: not a readable DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{name}: DICOM file holds no image (no pixel data)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageError(f"{name}: DICOM file lacks a valid image size") from None
    if frames > 1:
        raise ImageError(f"{name}: multi-frame DICOM ({frames} frames) is not supported; "
                         f"export the single radiograph")
    if rows * cols > max_pixels:
        raise ImageError(f"{name}: image too large ({cols}x{rows} pixels, limit {max_pixels})")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        if syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed:
            raise ImageError(f"{name}: cannot decode DICOM transfer syntax {syntax_name} "
                             f"({syntax}) with the installed pixel data handlers") from None
        raise ImageError(f"{name}: cannot decode DICOM pixel data ({type(e).__name__})") from None
    except (ValueError, AttributeError, TypeError, KeyError, OSError, EOFError) as e:
        raise ImageError(f"{name}: corrupt DICOM pixel data ({syntax_name}, "
                         f"{type(e).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour (RGB after pydicom's YBR conversion): no LUTs apply
        return _to_gray8(Image.fromarray(arr.astype(np.uint8), "RGB"))
    if arr.ndim != 2:
        raise ImageError(f"{name}: unexpected DICOM pixel array shape {arr.shape}")
    try:
        return _dicom_display(arr, ds, photometric)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError,
            NotImplementedError) as e:
        raise ImageError(f"{name}: invalid DICOM display settings (rescale, window or VOI "
                         f"LUT: {type(e).__name__})") from None


def _dicom_display(arr: np.ndarray, ds, photometric: str) -> Image.Image:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    with np.errstate(over="ignore", invalid="ignore"):
        a = apply_modality_lut(arr, ds).astype(np.float64)
        if ds.get("VOILUTSequence"):
            a = apply_voi_lut(np.rint(a).astype(np.int64), ds).astype(np.float64)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            a = apply_windowing(a, ds)
            lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)  # the output range
        elif int(ds.BitsStored) == 8 and "RescaleSlope" not in ds:
            lo, hi = 0.0, 255.0  # 8-bit values are already display values
        else:  # no display transform stored: stretch over the image's own range, as viewers do
            lo, hi = float(a.min()), float(a.max())
    a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    gray = np.round(np.clip(a, 0, 255)).astype(np.uint8)
    if photometric == "MONOCHROME1":  # 0 is white: invert to the usual MONOCHROME2
        gray = 255 - gray
    return Image.fromarray(gray)


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


def _decode_gray(path, name: str | None, draft: tuple[int, int] | None,
                 max_pixels: int) -> Image.Image:
    if name is None:
        name = str(path) if isinstance(path, str | Path) else getattr(path, "name", "<upload>")
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    try:
        if isinstance(path, str | Path) and Path(path).exists() and not Path(path).is_file() \
                and not Path(path).is_dir():
            # opening a FIFO blocks until a writer comes: never open what is not a file
            raise ImageError(f"{name}: not a regular file (a FIFO, socket or device)")
        if isinstance(path, str | Path) and Path(path).is_file() and Path(path).stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
        if is_dicom(path) or (isinstance(path, str | Path) and Path(path).suffix.lower() == ".dcm"):
            gray = _dicom_to_gray8(path, name, max_pixels)
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

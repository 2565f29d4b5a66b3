"""Checks on an uploaded file held in memory, before and while it is decoded.

Uploads are patient data: they are only ever held in memory, never written or logged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.preprocessing import Preprocessing
from ..data.decode import ImageError, load_gray

JPEG, PNG, DICOM = "image/jpeg", "image/png", "application/dicom"


@dataclass
class UploadError(Exception):
    """A bad upload: the HTTP status it earns (413, 415 or 422) and a message naming it."""

    status: int
    message: str

    def __str__(self) -> str:
        return self.message


def sniff(data: bytes) -> str | None:
    """The file's type from its first bytes (the declared content type is not trusted)."""
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data[128:132] == b"DICM":
        return DICOM
    return None


def _check_pixels(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse a decompression bomb from its header alone, before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as e:  # PIL's own, higher, limit
        raise UploadError(422, f"{name}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return  # not readable by its header: decoding will report the problem
    if width * height > max_pixels:
        raise UploadError(422, f"{name}: image is {width}x{height} pixels, more than the "
                               f"{max_pixels:,} this server accepts")


def decode(data: bytes, name: str, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> (size, size) uint8 gray array, or UploadError(415 or 422)."""
    if not data:
        raise UploadError(422, f"{name}: empty file")
    kind = sniff(data)
    if kind is None:
        raise UploadError(415, f"{name}: unsupported file type (not a JPEG, PNG or DICOM file)")
    if kind != DICOM:
        _check_pixels(data, name, max_pixels)
    try:
        return load_gray(io.BytesIO(data), prep.input_size, prep.interpolation, name=name,
                         storage_quality=prep.storage_quality)
    except ImageError as e:
        raise UploadError(422, str(e)) from None

"""Checks on an uploaded file held in memory, before and while it is decoded.

Uploads are patient data: they are only ever held in memory, never written or logged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..core.preprocessing import Preprocessing
from ..data.decode import ImageError, declared_pixels, load_gray

JPEG, PNG, DICOM = "image/jpeg", "image/png", "application/dicom"
# Uploads declaring more pixels than this decode in the server's one-at-a-time lane: a
# 4,000 x 4,000 image, larger than most detectors (43 cm at 0.1 mm is 4,300 px, 18.5 Mpx is
# rare); a full-size Kaggle original is under 8 Mpx.
HEAVY_PIXELS = 16_000_000


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


def decode(data: bytes, name: str, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> (size, size) uint8 gray array, or UploadError(415 or 422). Every
    decoding failure, whatever raised it, arrives as ImageError (data.decode) and is 422."""
    if not data:
        raise UploadError(422, f"{name}: empty file")
    if sniff(data) is None:
        raise UploadError(415, f"{name}: unsupported file type (not a JPEG, PNG or DICOM file)")
    try:
        return load_gray(io.BytesIO(data), prep.input_size, prep.interpolation, name=name,
                         max_pixels=max_pixels, storage_quality=prep.storage_quality)
    except ImageError as e:
        raise UploadError(422, str(e)) from None


def is_heavy(data: bytes) -> bool:
    """Whether decoding this upload may take long: its header declares over HEAVY_PIXELS,
    or its size is unknown until it is inflated (deflated DICOM) or its header unreadable.
    The server decodes such uploads one at a time, beside the others."""
    pixels = declared_pixels(io.BytesIO(data))
    return pixels is None or pixels > HEAVY_PIXELS


def lower_priority(by: int = 10) -> None:
    """Lower the calling thread's CPU priority (Linux: a thread has its own nice value), so
    that a large decode yields the cores to ordinary requests. No-op where unsupported."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (AttributeError, OSError):
        pass


def release_memory() -> None:
    """Give freed heap pages back to the system after a large decode. glibc keeps them in
    its arenas otherwise: a server's RSS went 897 -> 1,839 MiB after a few bombs and stayed
    (issue #18). No-op where glibc is not the C library."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()

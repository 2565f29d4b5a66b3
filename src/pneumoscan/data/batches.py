"""Decoding many files with a progress bar (load_many in chunks, results merged)."""

from __future__ import annotations

import numpy as np

from ..core import progress
from .decode import load_many


def load_many_shown(paths, size: int, interpolation: str = "bilinear",
                    storage_quality: int = 0, desc: str = "decoding"):
    """load_many(paths, ...) with a progress bar on stderr: the same (array, ok indices,
    {index: error}) result."""
    arrays, ok, errors = [], [], {}
    for s in progress.chunks(len(paths), desc):
        arr, good, bad = load_many(paths[s], size, interpolation,
                                   storage_quality=storage_quality)
        arrays.append(arr)
        ok += [s.start + i for i in good]
        errors.update({s.start + i: message for i, message in bad.items()})
    if not arrays:
        return np.zeros((0, size, size), np.uint8), ok, errors
    return np.concatenate(arrays), ok, errors

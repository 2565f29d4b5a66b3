"""Where pneumoscan keeps files between runs (exported graphs, the DICOMweb spool)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PNEUMOSCAN_CACHE"


def cache_dir() -> Path:
    """$PNEUMOSCAN_CACHE, else $XDG_CACHE_HOME/pneumoscan, else ~/.cache/pneumoscan."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumoscan"

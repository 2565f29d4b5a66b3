"""The decoded-image cache for training: in memory, or a memory-mapped file on disk.

Both hold the same uint8 (N, S, S) images, decoded once in chunks by transforms.load_many.
The disk cache is named by a key over the images' sha256s, size and interpolation, so a run
with the same data (or a resumed one) reuses it; anything else gets a new file. A cache is
reused only when its size, index and checksum match (_verify); otherwise it is rebuilt with
a warning, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from . import LABELS, Record, class_index
from .decode import load_many

log = logging.getLogger(__name__)

CHUNK = 256  # images decoded at once: bounds peak memory while the disk cache is built
MODES = ("memory", "disk", "auto")


def resolve_mode(mode: str, n: int, size: int, budget_gb: float) -> str:
    """memory | disk; 'auto' is disk when the decoded images exceed the budget
    (budget_gb <= 0: a quarter of this machine's RAM)."""
    if mode not in MODES:
        raise ValueError(f"cache must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    budget = budget_gb * 2**30 if budget_gb > 0 else 0.25 * _ram_bytes()
    return "disk" if n * size * size > budget else "memory"


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cache_key(records: list[Record], size: int, interpolation: str) -> str:
    h = hashlib.sha256(f"pneumoscan-cache-v1 {size} {interpolation}\n".encode())
    for r in records:  # an unreadable file has no sha256: its path stands in
        h.update(f"{r.sha256 or 'unreadable:' + r.path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def decode(records: list[Record], size: int, interpolation: str, mode: str,
           cache_dir: Path, labels=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N_ok, S, S) uint8, targets (N_ok,) float32, skipped messages); with `labels`
    of a K-class task the targets are (N_ok,) int64 class indices among them.

    mode 'disk' returns a read-only-on-disk np.memmap (copy-on-write in this process)."""
    if mode == "disk":
        images, ok, errors = _disk(records, size, interpolation, Path(cache_dir))
    else:
        images, ok, errors = _memory(records, size, interpolation)
    for message in errors:
        log.warning("skipping unreadable training image: %s", message)
    if labels is None or tuple(labels) == LABELS:
        targets = np.array([records[i].target for i in ok], dtype=np.float32)
    else:
        targets = np.array([class_index(records[i], labels) for i in ok], dtype=np.int64)
    return images, targets, errors


def _chunks(records: list[Record], size: int, interpolation: str):
    """(images, global ok indices, error messages) per chunk of CHUNK records."""
    for start in range(0, len(records), CHUNK):
        paths = [r.path for r in records[start:start + CHUNK]]
        arr, ok, errors = load_many(paths, size, interpolation)
        yield arr, [start + i for i in ok], list(errors.values())


def _memory(records, size, interpolation):
    out = np.empty((len(records), size, size), np.uint8)  # filled in place: no second copy
    ok, errors, n = [], [], 0
    for arr, ok_c, err_c in _chunks(records, size, interpolation):
        out[n:n + len(arr)] = arr
        n += len(arr)
        ok += ok_c
        errors += err_c
    return out[:n], ok, errors


def _disk(records, size, interpolation, cache_dir: Path):
    key = cache_key(records, size, interpolation)
    data, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    meta = None
    if data.is_file() and meta_path.is_file():  # meta is written last: its presence = complete
        problem, meta = _verify(data, meta_path, key, len(records), size, interpolation)
        if problem:
            log.warning("decoded-image cache %s is not usable (%s): rebuilding it", data,
                        problem)
            meta = None
        else:
            log.info("reusing decoded-image cache %s", data)
    if meta is None:
        meta = _build(records, size, interpolation, data, meta_path, key)
    n = len(meta["ok"])
    images = (np.memmap(data, np.uint8, mode="c", shape=(n, size, size)) if n
              else np.zeros((0, size, size), np.uint8))
    return images, meta["ok"], meta["errors"]


def _digest(data: Path, ok: list[int]) -> str:
    """sha256 of the images and of their index (which record each image is)."""
    with open(data, "rb") as f:
        h = hashlib.file_digest(f, "sha256")
    h.update(json.dumps(ok).encode())
    return h.hexdigest()


def _verify(data: Path, meta_path: Path, key: str, n: int, size: int, interpolation: str
            ) -> tuple[str | None, dict | None]:
    """(None, meta) for a cache that is what its index says, else (the problem, None): a
    truncated or overwritten file, an index cut short or corrupt, another build's index.
    Reading it back costs about a second per GB; a wrong cache costs a training run."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8", errors="surrogateescape"))
        ok, errors = meta["ok"], meta["errors"]
        expected = {"key": key, "size": size, "interpolation": interpolation, "n": n}
        wrong = [k for k, v in expected.items() if meta.get(k) != v]
        if wrong:
            return f"its index was written for other settings ({', '.join(wrong)})", None
        if not (isinstance(ok, list) and isinstance(errors, list)
                and all(isinstance(i, int) for i in ok) and ok == sorted(set(ok))
                and (not ok or 0 <= ok[0] and ok[-1] < n) and len(ok) + len(errors) == n):
            return "its index does not list each image once", None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable index {meta_path.name}: {type(e).__name__}", None
    actual = data.stat().st_size
    if actual != len(ok) * size * size:
        return (f"{actual:,} bytes, but its index lists {len(ok)} images of {size}x{size} = "
                f"{len(ok) * size * size:,} bytes"), None
    if _digest(data, ok) != meta.get("sha256"):
        return "its checksum does not match: the file was changed after it was written", None
    return None, meta


def _build(records, size, interpolation, data: Path, meta_path: Path, key: str) -> dict:
    """Append each decoded chunk to a temporary file, then rename: memory stays at one chunk,
    and a killed build leaves no file that looks complete."""
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_name(f"{data.name}.{os.getpid()}.tmp")
    ok, errors = [], []
    with open(tmp, "wb") as f:
        for arr, ok_c, err_c in _chunks(records, size, interpolation):
            f.write(arr.tobytes())
            ok += ok_c
            errors += err_c
    meta = {"key": key, "size": size, "interpolation": interpolation, "n": len(records),
            "ok": ok, "errors": errors, "sha256": _digest(tmp, ok)}
    os.replace(tmp, data)
    tmp_meta = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(meta), encoding="utf-8", errors="surrogateescape")
    os.replace(tmp_meta, meta_path)
    log.info("wrote decoded-image cache %s (%d images)", data, len(ok))
    return meta

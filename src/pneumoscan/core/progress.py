"""Progress of long steps, on stderr only (stdout carries --format json/csv): shown when stderr
is a terminal, or always after force(True) (the command line's --progress)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np
from tqdm import tqdm

_forced = False
CHUNK = 256  # images per update: a multiple of every batch size, so results do not change


def force(on: bool) -> None:
    """Show progress even when stderr is not a terminal (a log file, a CI job)."""
    global _forced
    _forced = on


def shown() -> bool:
    return _forced or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def bar(total: int, desc: str, unit: str = "image") -> tqdm:
    """A tqdm bar on stderr that is silent unless shown(); use it as a context manager."""
    # Every update is drawn (updates come per chunk of images, not per image): a fast step
    # still shows its 100% instead of depending on how long it took.
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shown(),
                dynamic_ncols=True, leave=False, mininterval=0, miniters=1)


def chunks(total: int, desc: str, size: int = CHUNK) -> Iterator[slice]:
    """slice(start, stop) over range(total) in steps of `size`, a bar moving after each."""
    with bar(total, desc) as b:
        for start in range(0, total, size):
            yield slice(start, min(total, start + size))
            b.update(min(size, total - start))


def step(message: str) -> None:
    """One line for a step that reports no finer progress (an export, a benchmark stage)."""
    if shown():
        print(f"{message} ...", file=sys.stderr, flush=True)


def mapped(fn: Callable, items, desc: str, size: int = CHUNK) -> list:
    """[fn(items[s]) for each chunk s of `items`], with a bar."""
    return [fn(items[s]) for s in chunks(len(items), desc, size)]


def batched(fn: Callable, images: np.ndarray, desc: str, size: int = CHUNK):
    """fn(images), computed chunk by chunk with a bar: fn's array, or tuple of arrays,
    concatenated. Chunks are a multiple of every batch size, so the result is the same."""
    if len(images) == 0:
        return fn(images)
    parts = mapped(fn, images, desc, size)
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts))
    return np.concatenate(parts)

"""Micro-batching: images that arrive while the model is busy are scored together.

All inference runs on one dedicated thread. Torch already uses every core for one batch, and
each new calling thread would start its own OpenMP team whose spinning threads starve the
others. One batch of 16 costs far less than 16 batches of 1 (fewer parallel regions to
synchronise), and batching changes a probability by about 1e-8, far below what is reported.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    """`await score(images)` -> probabilities; concurrent callers share batches of up to
    `max_batch` images, run by `fn` (uint8 (N, S, S) -> (N,)) on a single worker thread."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = 8):
        self.fn, self.max_batch = fn, max_batch
        self._pending: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._runner: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    async def score(self, images: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((images, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch, n = [], 0
        while self._pending and (not batch or n + len(self._pending[0][0]) <= self.max_batch):
            batch.append(self._pending.popleft())
            n += len(batch[-1][0])
        return batch

    async def _drain(self) -> None:
        while self._pending:
            batch = self._take()
            images = np.concatenate([x for x, _ in batch])
            try:
                probs = await asyncio.wrap_future(self._thread.submit(self.fn, images))
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for x, future in batch:
                if not future.done():  # a caller that disconnected was cancelled
                    future.set_result(probs[start:start + len(x)])
                start += len(x)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

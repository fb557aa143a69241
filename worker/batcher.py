"""Micro-batching of ready windows for inference.

Items are submitted from the event loop. A batch is cut when it holds `max_batch`
items or `max_wait_s` after its first item was submitted, whichever comes first;
items that piled up while the previous batch was computing form the next batch at
once if their wait is already over. The compute function runs in ONE dedicated
thread so the event loop keeps consuming, and so the model is never entered
concurrently. Results go to an async handler, batch by batch, in submit order.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass
class Batch:
    items: list[Any]
    enqueued: list[float]       # time.time() when each item was submitted
    started: float               # time.time() when compute began
    finished: float              # time.time() when compute returned (or failed)
    results: list[Any] | None    # one per item, None when compute failed
    error: BaseException | None = None


class MicroBatcher:
    """`compute(items) -> results` (blocking, same length) and `handle(batch)` (async).

    If compute raises for a batch of several items, each item is retried alone so one
    bad window cannot sink its neighbours; an item that fails alone reaches handle()
    with `error` set and `results` None.
    """

    def __init__(self, compute: Callable[[Sequence[Any]], Sequence[Any]],
                 handle: Callable[[Batch], Awaitable[None]],
                 max_batch: int = 64, max_wait_s: float = 0.005):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._compute = compute
        self._handle = handle
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: deque[tuple[float, float, Any]] = deque()  # (monotonic, wall, item)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_batch = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._closing = False

    # -- queue state, for backpressure and metrics
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Items submitted and not yet handed to handle()."""
        return len(self._queue) + self._in_batch

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    def submit(self, item: Any) -> None:
        if self._closing:
            raise RuntimeError("batcher is closed")
        self._queue.append((time.monotonic(), time.time(), item))
        self._idle.clear()
        self._wakeup.set()

    def run_in_thread(self, fn: Callable, *args) -> Awaitable:
        """Run `fn` on the inference thread (e.g. warm-up, model swap) between batches."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted item went through handle(). False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> list[tuple[float, float, Any]]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0][0] + self.max_wait_s
        while len(self._queue) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        n = min(self.max_batch, len(self._queue))
        return [self._queue.popleft() for _ in range(n)]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            entries = await self._next_batch()
            self._in_batch = len(entries)
            items = [e[2] for e in entries]
            enqueued = [e[1] for e in entries]
            try:
                for batch in await self._compute_batch(loop, items, enqueued):
                    try:
                        await self._handle(batch)
                    except Exception:
                        log.exception("batch handler failed")
            finally:
                self._in_batch = 0
                if not self._queue:
                    self._idle.set()

    async def _compute_batch(self, loop, items, enqueued) -> list[Batch]:
        started = time.time()
        try:
            results = await loop.run_in_executor(self._executor, self._compute, items)
            if len(results) != len(items):
                raise RuntimeError(f"compute returned {len(results)} results for {len(items)} items")
            return [Batch(items, enqueued, started, time.time(), list(results))]
        except Exception as err:
            if len(items) == 1:
                log.exception("inference failed for one item")
                return [Batch(items, enqueued, started, time.time(), None, err)]
            log.exception("inference failed for a batch of %d; retrying items one by one", len(items))
        batches = []
        for item, t in zip(items, enqueued):
            batches.extend(await self._compute_batch(loop, [item], [t]))
        return batches

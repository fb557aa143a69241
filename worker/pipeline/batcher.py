"""Micro-batching of ready windows for inference.

Items are submitted from the event loop. A batch is cut when it holds `max_batch`
items or `max_wait_s` after its first item was submitted, whichever comes first;
items that piled up while the previous batch was computing form the next batch at
once if their wait is already over. While the feeder says more items are on their way
(`feeding(True)`: the fetch loop holds bars of a burst it has not handed over yet), a
stream batch keeps gathering past `max_wait_s`, up to `max_batch` items or
`stream_max_gather_s` after its first item: a burst of N runs as ceil(N / max_batch)
full batches, not as a small first batch cut while the rest of the burst was still
being read. The compute function runs in ONE dedicated
thread so the event loop keeps consuming, and so the model is never entered
concurrently. Results go to an async handler, batch by batch, in submit order; the
handler of one batch runs while the next batch computes (the engine does not sit idle
while a batch's forecasts are encoded and sent).

A second, lower-priority lane (`submit_low`, used by the HTTP API when it shares the
worker's engine) has its own bound and answers through futures instead of the handler.
Its items are only batched when no stream item waits, and never share a batch with
stream items: stream batches always go first, so ad-hoc requests cannot delay the
stream by more than the one low-priority batch already computing. A cancelled future
(a client that went away) leaves the queue at once and is never computed.

The lower-priority lane gathers differently: a burst of requests (many clients whose
answers came back together and who ask again at once) reaches it one parsed request at a
time, each a few ms apart on a busy event loop, so "max_wait after the first" would cut it
into cohorts that then keep alternating on the engine. A low batch is cut when it holds
`max_batch` items, or when for `max_wait_s` nothing new arrived, no answer went out
(`low_answered()`) and no request was being parsed (`arriving()`), or `low_max_gather_s`
after gathering began, whichever comes first. Gathering begins with the first waiting
item or, for items that piled up while the engine was busy, when the engine became free:
a cohort that piled up then waits for the one whose answers are going out, and they merge.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """submit_low() with the lower-priority lane at its bound."""


class _Entry:
    # Identity equality on purpose: removing a cancelled entry must not compare items.
    __slots__ = ("mono", "wall", "item", "fut")

    def __init__(self, item: Any, fut: asyncio.Future | None = None):
        self.mono = time.monotonic()
        self.wall = time.time()
        self.item = item
        self.fut = fut


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

    Lower-priority items (`submit_low`) resolve their future with `(result, batch)` or
    the error instead; `on_low_batch(batch)`, when set, sees each such batch (metrics).
    """

    def __init__(self, compute: Callable[[Sequence[Any]], Sequence[Any]],
                 handle: Callable[[Batch], Awaitable[None]],
                 max_batch: int = 64, max_wait_s: float = 0.005, low_max_queue: int = 256,
                 low_max_gather_s: float | None = None, stream_max_gather_s: float | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if low_max_queue < 1:
            raise ValueError("low_max_queue must be >= 1")
        self._compute = compute
        self._handle = handle
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: deque[_Entry] = deque()
        self._low: deque[_Entry] = deque()   # lower-priority lane, each entry with a future
        self.low_max_queue = low_max_queue
        self.on_low_batch: Callable[[Batch], None] | None = None
        self._low_in_batch: list[_Entry] = []
        # Hard cap on gathering a low batch (a slow upload or an endless trickle of arrivals
        # must not hold the first request back for long): default 50 x max_wait, 0.25-1 s.
        self.low_max_gather_s = (min(1.0, max(0.25, 50 * max_wait_s)) if low_max_gather_s is None
                                 else low_max_gather_s)
        # Hard cap on gathering a stream batch while the feeder has more: default as for the low lane.
        self.stream_max_gather_s = (min(1.0, max(0.25, 50 * max_wait_s)) if stream_max_gather_s is None
                                    else stream_max_gather_s)
        self._feeding = False         # the feeder holds stream items it has not submitted yet
        self._low_arriving = 0        # requests being received/parsed that will submit_low
        self._low_last = 0.0          # monotonic time of the last submit_low
        self._engine_free_at = 0.0    # monotonic time the last batch finished
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_batch = 0
        self._unhandled = 0           # stream items computed whose batch handle() has not finished
        self._handling: asyncio.Task | None = None  # the last batch's handler (each awaits the one before)
        self._handlers: set[asyncio.Task] = set()   # those not finished
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._closing = False

    # -- queue state, for backpressure and metrics
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Items submitted and not yet through handle()."""
        return len(self._queue) + self._in_batch + self._unhandled

    @property
    def low_queued(self) -> int:
        """Lower-priority items waiting (cancelled ones have left already)."""
        return len(self._low)

    @property
    def low_pending(self) -> int:
        return len(self._low) + len(self._low_in_batch)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    def submit(self, item: Any) -> None:
        if self._closing:
            raise RuntimeError("batcher is closed")
        self._queue.append(_Entry(item))
        self._idle.clear()
        self._wakeup.set()

    def submit_low(self, item: Any) -> asyncio.Future:
        """Queue `item` behind every stream item; the future gets `(result, batch)` or the
        compute error. Cancel it to withdraw the item. QueueFull at `low_max_queue`."""
        if self._closing:
            raise RuntimeError("batcher is closed")
        if len(self._low) >= self.low_max_queue:
            raise QueueFull(f"{len(self._low)} requests queued")
        fut = asyncio.get_running_loop().create_future()
        entry = _Entry(item, fut)
        self._low.append(entry)
        self._low_last = entry.mono
        fut.add_done_callback(lambda f: self._withdraw(entry) if f.cancelled() else None)
        self._idle.clear()
        self._wakeup.set()
        return fut

    @contextlib.contextmanager
    def arriving(self):
        """Around receiving and parsing a request that will submit_low: a low batch being
        gathered waits for it (up to low_max_gather_s) instead of leaving it to the next."""
        self._low_arriving += 1
        try:
            yield
        finally:
            self._low_arriving -= 1
            self._wakeup.set()

    def feeding(self, more: bool) -> None:
        """The feeder (the fetch loop) holds items it will submit soon (True) or none (False):
        while True, a stream batch is not cut at max_wait_s (see the module docstring)."""
        if more != self._feeding:
            self._feeding = more
            if not more:
                self._wakeup.set()

    def low_answered(self) -> None:
        """An answer of a low batch went out: its client may well ask again at once, so a
        low batch being gathered keeps waiting (quiet time counts from now)."""
        self._low_last = time.monotonic()
        self._wakeup.set()

    def _withdraw(self, entry: _Entry) -> None:
        try:
            self._low.remove(entry)  # frees its slot now; no-op once it is in a batch
        except ValueError:
            pass
        self._set_idle_if_done()
        self._wakeup.set()

    def _set_idle_if_done(self) -> None:
        if not (self._queue or self._low or self._in_batch or self._low_in_batch or self._unhandled):
            self._idle.set()

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
        handlers = list(self._handlers)  # batches computed and not handled yet: left as a cancelled _run left them
        for t in handlers:
            t.cancel()
        if handlers:
            await asyncio.wait(handlers)
        self._handling = None
        for e in self._low:  # nobody waits forever on a closed batcher
            if not e.fut.done():
                e.fut.set_exception(RuntimeError("batcher is closed"))
        self._low.clear()
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> tuple[list[_Entry], bool]:
        """The next batch and whether it is from the lower-priority lane."""
        while True:
            while not self._queue and not self._low:
                self._wakeup.clear()
                await self._wakeup.wait()
            low = not self._queue
            lane = self._low if low else self._queue
            while lane and len(lane) < self.max_batch and not (low and self._queue):
                now = time.monotonic()
                if low:
                    began = max(lane[0].mono, self._engine_free_at)
                    cap = began + self.low_max_gather_s - now
                    quiet = max(self._low_last, began) + self.max_wait_s - now
                    if cap <= 0 or (quiet <= 0 and not self._low_arriving):
                        break
                    remaining = cap if quiet <= 0 else min(cap, quiet)
                else:
                    remaining = lane[0].mono + self.max_wait_s - now
                    if remaining <= 0:
                        if not self._feeding:
                            break
                        # More of the burst is on its way: keep gathering, up to the hard cap.
                        remaining = lane[0].mono + self.stream_max_gather_s - now
                        if remaining <= 0:
                            break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    if not low and not self._feeding:
                        break
            if low and self._queue:
                continue  # a stream item arrived while low-priority items gathered: it goes first
            n = min(self.max_batch, len(lane))
            if n:
                return [lane.popleft() for _ in range(n)], low

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            entries, low = await self._next_batch()
            if low:
                self._low_in_batch = entries
            else:
                self._in_batch = len(entries)
            items = [e.item for e in entries]
            enqueued = [e.wall for e in entries]
            try:
                batches = await self._compute_batch(loop, items, enqueued)
                if low:
                    self._resolve(entries, batches)
                    continue
                # Handled in order, but off this loop: the next batch starts computing now.
                self._unhandled += len(items)
                self._handling = asyncio.ensure_future(self._handle_in_order(self._handling, batches, len(items)))
                self._handlers.add(self._handling)
                self._handling.add_done_callback(self._handlers.discard)
            except asyncio.CancelledError:
                if low:  # closed mid-batch: its requests get an answer, not silence
                    for e in entries:
                        if not e.fut.done():
                            e.fut.set_exception(RuntimeError("batcher is closed"))
                raise
            finally:
                self._engine_free_at = time.monotonic()
                self._in_batch = 0
                self._low_in_batch = []
                self._set_idle_if_done()

    async def _handle_in_order(self, before: asyncio.Task | None, batches: list[Batch], n: int) -> None:
        """handle() each of `batches` once the batches computed before them are handled."""
        try:
            if before is not None:
                await asyncio.wait([before])  # its outcome is its own (logged there)
            for batch in batches:
                try:
                    await self._handle(batch)
                except Exception:
                    log.exception("batch handler failed")
        finally:
            self._unhandled -= n
            self._set_idle_if_done()

    def _resolve(self, entries: list[_Entry], batches: list[Batch]) -> None:
        """Lower-priority results to their futures (batches cover entries in order)."""
        it = iter(entries)
        for batch in batches:
            if self.on_low_batch is not None:
                try:
                    self.on_low_batch(batch)
                except Exception:
                    log.exception("low-priority batch observer failed")
            for i in range(len(batch.items)):
                fut = next(it).fut
                if fut.done():  # cancelled while computing: nobody is listening
                    continue
                if batch.error is not None:
                    fut.set_exception(batch.error)
                else:
                    fut.set_result((batch.results[i], batch))

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

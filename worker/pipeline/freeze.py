"""Noticing that this worker stood still for longer than its consumer-group session.

A process that was frozen (SIGSTOP, a paused VM, a debugger) or starved of CPU past its
session timeout wakes up believing it still owns its partitions, while the group has most
likely handed them to other workers already. Until aiokafka hears about it (the next
heartbeat or commit is refused), such a worker would go on writing into windows that are
another worker's now. `FreezeWatch.poll()` measures the time since it was last called: a
background task calls it every `tick_s`, and the fetch loop before every message, so
whichever runs first after the wake notices, before another write. `on_freeze(gap)` then
drops every partition without committing and asks the group to rejoin (worker/app/worker.py).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable


class FreezeWatch:
    def __init__(self, limit_s: float, on_freeze: Callable[[float], None], tick_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        if limit_s <= tick_s:
            raise ValueError(f"freeze limit {limit_s}s must be longer than the tick ({tick_s}s)")
        self.limit_s = limit_s
        self.on_freeze = on_freeze
        self.tick_s = tick_s
        self.clock = clock
        self.last = clock()
        self.freezes = 0

    def poll(self) -> bool:
        """True (once, after calling on_freeze) when nothing polled for longer than the limit."""
        now = self.clock()
        gap, self.last = now - self.last, now
        if gap <= self.limit_s:
            return False
        self.freezes += 1
        self.on_freeze(gap)
        return True

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self.tick_s)

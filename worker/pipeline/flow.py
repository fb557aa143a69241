"""Flow control: when the worker stops taking bars from Kafka, and when it starts again.

Three reasons pause partitions, none of them drops a bar (paused partitions are simply
not fetched; their bars wait in Kafka):
- backpressure: the inference queue is full; every partition waits until it halves;
- run-ahead: a partition is as far past its commit as a re-read could still find windows
  for (worker/pipeline/runahead.py); it waits for its commits;
- an outage: Redis stopped answering; every partition waits until it is back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

log = logging.getLogger(__name__)


class Flow:
    def __init__(self, consumer, metrics):
        self.consumer = consumer
        self.metrics = metrics

    def pause_all(self) -> list:
        paused = list(self.consumer.assignment())
        self.consumer.pause(*paused)
        self.metrics.paused_partitions.set(len(paused))
        return paused

    def resume(self, paused: list) -> None:
        """Resume those of `paused` still assigned (a rebalance may have moved some)."""
        self.consumer.resume(*[tp for tp in paused if tp in self.consumer.assignment()])
        self.metrics.paused_partitions.set(0)

    async def backpressure(self, pending: Callable[[], int], max_queue: int) -> None:
        """Never drop: when the queue is full, pause every partition until it halves."""
        if pending() < max_queue:
            return
        paused = self.pause_all()
        log.info("queue full (%d): paused %d partitions", pending(), len(paused))
        while pending() > max_queue // 2:
            await asyncio.sleep(0.002)
        self.resume(paused)

    async def within_runahead(self, st, symbol: str, commit: Callable[[], Awaitable], stopping: Callable[[], bool]) -> bool:
        """Wait, with the partition paused, until handling one more bar of `symbol` keeps the
        commit close enough for a re-read to find the bar's window. False: the partition was
        revoked or the worker is stopping meanwhile."""
        ra = st.runahead
        if ra is None or not ra.full(symbol):
            return True
        self.consumer.pause(st.tp)
        log.debug("%s: %d bars of %s past the commit: waiting for commits", st.tp, ra.ahead(symbol), symbol)
        last_commit = 0.0
        try:
            while ra.full(symbol) and st.owned and not stopping():
                if time.monotonic() - last_commit >= 0.05:  # do not wait for the tick to commit
                    last_commit = time.monotonic()
                    await commit()
                await asyncio.sleep(0.005)
        finally:
            if st.tp in self.consumer.assignment():
                self.consumer.resume(st.tp)
        return st.owned and not stopping()

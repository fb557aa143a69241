"""Window recovery: notice that Redis lost a partition's windows, rebuild them from the bar topic.

Each owned partition has a marker key in Redis (worker/keys.py) that lives and dies with
its windows: a FLUSHALL, or a failover onto an empty Redis, removes both. A missing marker
at the first message after assignment, or later on a tick, means the windows are gone:
the partition's bars from `PartitionState.rebuild_from()` up to where the worker had got
are re-read (outside the consumer group) and upserted again, without forecasting them.
"""
from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Callable

from worker import events
from worker.keys import RedisKeys
from worker.partition import PartitionState
from worker.windows import WindowStore

log = logging.getLogger(__name__)

# (tp, start, end) -> messages of tp with start <= offset < end (worker.kafka.read_partition)
Reader = Callable[..., AsyncIterator]


class Recovery:
    def __init__(self, redis, store: WindowStore, keys: RedisKeys, read: Reader, worker_id: str, metrics,
                 parse: Callable | None = None):
        self.redis = redis
        # message -> Bar or InvalidEvent: the live path's checks (Ingest.parse), so a rebuild
        # never stores a bar the DLQ got.
        self.parse = parse or _parse
        self.store = store
        self.keys = keys
        self.read = read
        self.worker_id = worker_id
        self.metrics = metrics
        self.rebuilds = 0

    def _marker(self, state: PartitionState) -> str:
        return self.keys.partition_marker(state.tp.topic, state.tp.partition)

    async def check(self, state: PartitionState, first_offset: int) -> None:
        """First message after assignment: are this partition's windows in Redis? A previous
        owner wrote them (floor known) but the marker is gone: rebuild up to `first_offset`."""
        # Marked checked only once Redis answered: a Redis outage here means checking again.
        if not await self.redis.exists(self._marker(state)) and first_offset > 0 and state.floor is not None:
            log.warning("Redis has no windows for %s: rebuilding from offset %d", state.tp, state.floor)
            await self.rebuild(state, first_offset)
        await self.redis.set(self._marker(state), self.worker_id)
        state.checked = True

    async def lost_any(self, states: list[PartitionState]) -> bool:
        """A flush while no bars arrive: noticed by a checked partition's missing marker."""
        for st in states:
            if st.processed is not None and st.checked and not await self.redis.exists(self._marker(st)):
                return True
        return False

    async def rebuild_all(self, states: list[PartitionState]) -> None:
        for st in sorted(states, key=lambda s: (s.tp.topic, s.tp.partition)):
            if st.processed is not None:
                await self.rebuild(st, st.processed)
                await self.redis.set(self._marker(st), self.worker_id)

    async def rebuild(self, state: PartitionState, end: int) -> None:
        """Re-upsert the partition's bars in [rebuild_from, end) into Redis, forecasting nothing."""
        start = state.rebuild_from()
        if start is None or start >= end:
            return
        t0 = time.monotonic()
        symbols = set(state.oldest)
        await self.store.delete(symbols)  # start clean so bars land in their original order
        n = 0
        async for msg in self.read(state.tp, start, end):
            bar = self.parse(msg)
            if not isinstance(bar, events.Bar):
                continue
            await self.store.upsert(bar, msg.offset)
            symbols.add(bar.symbol)
            n += 1
        for sym in symbols:
            state.note_window(sym, await self.store.window(sym))
        self.metrics.window_rebuilds.inc()
        self.rebuilds += 1
        log.warning("rebuilt %d windows of %s from %d bars (offsets %d..%d) in %.2fs",
                    len(symbols), state.tp, n, start, end - 1, time.monotonic() - t0)


def _parse(msg) -> events.Bar | events.InvalidEvent:
    try:
        return events.parse_bar(msg.value, msg.key)
    except Exception as exc:  # noqa: BLE001 - the live path sent it to the DLQ
        return exc if isinstance(exc, events.InvalidEvent) else events.InvalidEvent("internal_error", repr(exc))

"""Window recovery: notice that Redis lost a partition's windows, rebuild them from the bar topic.

Each owned partition has a marker key in Redis (worker/adapters/keys.py) that lives and dies with
its windows: a FLUSHALL, or a failover onto an empty Redis, removes both. A missing marker
at the first message after assignment, or later on a tick, means the windows are gone:
the partition's bars from `PartitionState.rebuild_from()` up to where the worker had got
are re-read (outside the consumer group) and upserted again, without forecasting them.

`ride_out` is what the fetch loop does when Redis fails a command (gone, restarting, out of
memory, read-only, a Sentinel or Cluster failover under way): pause every partition, say
not ready, wait until Redis accepts a write again, and note whether it came back empty or
on another node (`lost`: rebuild before the next bar). A failover's promoted replica may
miss the old primary's last writes while still holding the markers, so a change of node
counts as a loss (the slow tick notices one the client rode out by itself, as a Cluster
client retrying MOVED may).
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import AsyncIterator, Callable

from worker.contracts import events
from worker.pipeline import poison
from worker.adapters.keys import RedisKeys
from worker.pipeline.partition import PartitionState
from worker.pipeline.windows import WindowStore

log = logging.getLogger(__name__)

# (tp, start, end) -> messages of tp with start <= offset < end (worker.adapters.kafka.read_partition)
Reader = Callable[..., AsyncIterator]


class Recovery:
    def __init__(self, redis, store: WindowStore, keys: RedisKeys, read: Reader, worker_id: str, metrics,
                 parse: Callable):
        self.redis = redis
        # message -> Bar or InvalidEvent: the live path's checks (Ingest.parse), so a rebuild
        # never stores a bar the DLQ got.
        self.parse = parse
        self.store = store
        self.keys = keys
        self.read = read
        self.worker_id = worker_id
        self.metrics = metrics
        self.rebuilds = 0
        self.lost = False  # Redis lost windows: rebuild them before the next bar

    def _marker(self, state: PartitionState) -> str:
        return self.keys.partition_marker(state.tp.topic, state.tp.partition)

    async def check(self, state: PartitionState, first_offset: int) -> None:
        """First message after assignment: are this partition's windows in Redis? A previous
        owner wrote them (floor known) but the marker is gone: rebuild up to `first_offset`."""
        # Marked checked only once Redis answered: a Redis outage here means checking again.
        if not await self.redis.exists(self._marker(state)) and first_offset > 0 and state.floor is not None:
            log.warning("Redis has no windows for %s: rebuilding from offset %d", state.tp, state.floor)
            await self.rebuild(state, first_offset)
        if not state.owned:  # revoked meanwhile: the next owner checks (and marks) for itself
            return
        await self.redis.set(self._marker(state), self.worker_id)
        state.checked = True

    async def lost_any(self, states: list[PartitionState]) -> bool:
        """A flush while no bars arrive: noticed by a checked partition's missing marker."""
        for st in states:
            if st.checked and not await self.redis.exists(self._marker(st)):
                return True
        return False

    async def rebuild_all(self, states: list[PartitionState]) -> None:
        self.lost = False
        try:
            for st in sorted(states, key=lambda s: (s.tp.topic, s.tp.partition)):
                # A partition revoked meanwhile is another worker's now: deleting and refilling
                # its windows would undo what that worker stored since.
                if not st.owned:
                    continue
                if st.processed is None:
                    # Checked but no bar handled yet: the windows its previous owner left are
                    # gone too. Checked again at its next bar, which rebuilds them up to there.
                    st.checked = False
                    continue
                if await self.rebuild(st, st.processed):
                    await self.redis.set(self._marker(st), self.worker_id)
        except BaseException:
            self.lost = True  # interrupted (Redis went away again): start over when it is back
            raise

    async def notice_loss(self, states: list[PartitionState]) -> None:
        """On a tick: a flush while no bars arrive shows as a missing marker."""
        if not self.lost:
            self.lost = await self.lost_any(states)

    async def ride_out(self, err: BaseException, flow, health, states: Callable[[], list[PartitionState]],
                       stopping: Callable[[], bool]) -> None:
        """Redis failed a command mid-stream: pause every partition, say not ready, wait with
        backoff until it accepts a write; note whether it came back empty."""
        from worker.adapters.waiting import wait_until

        health.redis_down(True, poison.describe(err))
        paused = flow.pause_all()
        log.warning("Redis stopped answering (%r): paused %d partitions", err, len(paused))
        t0 = time.monotonic()

        async def back() -> None:
            await self.store.ping()
            # A write, too: a Redis out of memory or read-only answers pings but refuses this.
            await self.redis.set(self.keys.probe(), self.worker_id, ex=60)
            if await self.lost_any(states()):
                self.lost = True  # came back empty: rebuild from the bar topic before going on
            # A Sentinel or Cluster failover: the promoted replica may lack the last writes the
            # old primary took (asynchronous replication), markers or not: rebuild them too.
            if health.note_redis_node(self.redis):
                self.lost = True

        try:
            answered = await wait_until(back, "Redis", stopping=stopping, cap_s=1.0)  # a failover takes seconds
        finally:
            health.redis_down(False)
        if answered:
            log.warning("Redis is back after %.1fs: resuming", time.monotonic() - t0)
        flow.resume(paused)

    async def rebuild(self, state: PartitionState, end: int) -> bool:
        """Re-upsert the partition's bars in [rebuild_from, end) into Redis, forecasting nothing.
        False when the partition was revoked midway: its windows are then incomplete, and its
        marker is removed so that whoever owns it next rebuilds them."""
        start = state.rebuild_from()
        if start is None or start >= end:
            return True
        t0 = time.monotonic()
        symbols = set(state.oldest)
        await self.store.delete(symbols)  # start clean so bars land in their original order
        n = 0
        async with contextlib.aclosing(self.read(state.tp, start, end)) as messages:
            async for msg in messages:
                if not state.owned:  # revoked mid-rebuild: stop writing into the next owner's windows
                    log.info("rebuild of %s stopped at offset %d: the partition was revoked", state.tp, msg.offset)
                    await self.redis.delete(self._marker(state))
                    return False
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
        return True


"""Which partitions this worker owns: one PartitionState each, added and dropped by the group's rebalances.

On assignment a partition starts from what the group committed: the offset, and in the
commit metadata the position a rebuild of its windows must start from (worker/pipeline/commit.py).
On revocation its in-flight copies get until the revocation drain (worker/adapters/kafka.py
REVOKE_DRAIN_S, at most --drain-timeout-s) to be acknowledged, what they allow is committed,
and the object is dropped: late work for it sees `owned` false.
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import ConsumerRebalanceListener

from worker.adapters import kafka
from worker.pipeline.commit import inherited_floor
from worker.pipeline.ingest import REDELIVERY_SLACK
from worker.pipeline.partition import PartitionState
from worker.pipeline.runahead import RunAhead

log = logging.getLogger("kronos_rt.worker")

# Bars of one symbol a worker may handle past its partition's committed offset: what Redis
# keeps beyond the lookback, less one for a pipelined upsert ahead and one to spare.
RUNAHEAD_LIMIT = REDELIVERY_SLACK - 2


class Ownership(ConsumerRebalanceListener):
    def __init__(self, states: dict, consumer, committer, store, metrics, drain_timeout_s: float,
                 on_owned=lambda: None):
        self.states = states  # TopicPartition -> PartitionState, owned ones only (the Worker's dict)
        self.consumer = consumer
        self.committer = committer
        self.store = store
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        self.on_owned = on_owned  # called once partitions are owned (Worker.ready)

    def owned(self) -> list[PartitionState]:
        return list(self.states.values())

    def outstanding(self) -> int:
        """Copies sent but not yet acknowledged, over every owned partition."""
        return sum(st.offsets.outstanding() for st in self.states.values())

    async def on_partitions_assigned(self, assigned) -> None:
        assigned = list(assigned)
        try:
            committed = await kafka.fetch_committed(self.consumer, assigned)
            unknown = False
        except Exception as err:  # noqa: BLE001 - e.g. the broker froze mid-rebalance
            log.warning("reading committed offsets failed (%r): a rebuild, if needed, starts at offset 0", err)
            committed, unknown = {}, True
        for tp in assigned:
            offset, meta = committed.get(tp, (None, None))
            # Not knowing what the group committed is not "nothing committed": the consumer
            # may still start past bars whose windows Redis lost, so a rebuild reads from 0.
            floor = 0 if unknown else inherited_floor(offset, meta)
            self.states[tp] = PartitionState(
                tp, floor=floor,
                committed=offset if offset is not None and offset >= 0 else None,
                runahead=RunAhead(RUNAHEAD_LIMIT))
        log.info("assigned %s", sorted(tp.partition for tp in self.states))
        if self.states:
            self.on_owned()

    def drop_all(self) -> list:
        """Forget every partition at once, committing nothing: this worker stood still past its
        session (worker/pipeline/freeze.py) and the group has most likely given them to others, whose
        windows it must not write to. The group's next assignment brings back what is ours."""
        states = list(self.states.values())
        self.states.clear()
        for st in states:
            st.owned = False  # the fetch loop, rebuilds and late ingest stop writing for it
            self.store.forget(st.oldest.keys())
            try:
                self.metrics.consumer_lag.remove(st.tp.topic, str(st.tp.partition))
            except KeyError:
                pass
        return sorted(st.tp.partition for st in states)

    async def on_partitions_revoked(self, revoked) -> None:
        states = [self.states.pop(tp) for tp in revoked if tp in self.states]
        if not states:
            return
        for st in states:
            st.owned = False  # the fetch loop and late ingest drop their remaining work
        deadline = time.monotonic() + self.drain_timeout_s
        while any(st.offsets.outstanding() for st in states) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await self.committer.commit(states)
        for st in states:
            self.store.forget(st.oldest.keys())
            try:
                self.metrics.consumer_lag.remove(st.tp.topic, str(st.tp.partition))
            except KeyError:
                pass
        log.info("revoked %s", sorted(st.tp.partition for st in states))

"""The view's Kafka reader: every partition of the bars, forecasts and (optional) scores
topics, read by one aiokafka consumer of its own, fed into a worker.view.state.ViewState.

The consumer has no group_id: it assigns itself the partitions (group-less, as `kronos-rt
report` and `tail` read), so it never joins the workers' group, never moves their assignment
and never commits anything. Each partition starts `history` messages before the end seen at
its first fetch (its high-watermark; ListOffsets is not used, being unreliable on some brokers,
see worker/adapters/kafka.py), or at the beginning with history=0, then follows new messages. Topics
that do not exist yet are looked for again every few seconds (listed, never described: on
brokers that auto-create topics, describing a missing one would create it).
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition

from worker.adapters.kafka import make_consumer, topic_partitions
from worker.view.state import ViewState

log = logging.getLogger(__name__)


class Feed:
    def __init__(self, state: ViewState, brokers: str, topics: dict[str, str], *, security=None,
                 history: int = 20000, refresh_s: float = 3.0):
        """topics: kind ("bars", "forecasts", "scores") -> topic name; an empty name is left out."""
        self.state, self.brokers, self.security = state, brokers, security
        self.kind_of = {topic: kind for kind, topic in topics.items() if topic}
        self.history = history
        self.refresh_s = refresh_s
        self.partitions: dict[str, int] = {}   # topic -> partitions assigned
        self._consumer = None
        self._untrimmed: set[TopicPartition] = set()  # start not yet moved to `history` before the end
        self._stopping = False

    @property
    def missing(self) -> list[str]:
        return sorted(t for t in self.kind_of if t not in self.partitions)

    async def start(self) -> None:
        """Connect (a broker that does not answer fails here, before the page is served)."""
        consumer = make_consumer(self.brokers, security=self.security, group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", client_id="kronos-rt-view", fetch_max_wait_ms=200)
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        await self._assign()

    async def _assign(self) -> None:
        """Assign the partitions of the topics that exist now, keeping the positions of those
        already read (aiokafka's assign() replaces the whole assignment)."""
        consumer = self._consumer
        listed = await consumer.topics()  # a listing of every topic: creates nothing
        existing = [t for t in self.kind_of if t in listed]
        found = await topic_partitions(self.brokers, existing, self.security) if existing else {}
        if found == self.partitions:
            return
        old = set(consumer.assignment())
        positions = {tp: await consumer.position(tp) for tp in old}
        tps = [TopicPartition(t, p) for t, n in found.items() for p in range(n)]
        consumer.assign(tps)
        for tp in tps:
            if tp in positions:
                consumer.seek(tp, positions[tp])
            else:
                consumer.seek(tp, 0)  # below the log start: reset to it (earliest)
                if self.history:
                    self._untrimmed.add(tp)
        for topic in sorted(set(found) - set(self.partitions)):
            log.info("view: reading %s (%s, %d partitions)", topic, self.kind_of[topic], found[topic])
        self.partitions = found

    async def run(self) -> None:
        """Read and feed until stop()."""
        consumer = self._consumer
        loop = asyncio.get_running_loop()
        next_look = loop.time() + self.refresh_s
        while not self._stopping:
            if loop.time() >= next_look:
                await self._assign()
                # Missing topics are looked for often; new partitions of known ones now and then.
                next_look = loop.time() + (self.refresh_s if self.missing else 20 * self.refresh_s)
            if not self.partitions:
                await asyncio.sleep(min(0.5, self.refresh_s))
                continue
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for tp, msgs in batch.items():
                start = self._trim(tp, msgs)
                kind = self.kind_of[tp.topic]
                for m in msgs:
                    if m.offset >= start:
                        self.state.feed(kind, m.value, m.key, where=f"{tp.topic}[{tp.partition}]@{m.offset}")
            await asyncio.sleep(0)  # let the pages' event streams run between batches

    def _trim(self, tp: TopicPartition, msgs: list) -> int:
        """The first offset to feed of `tp`: `history` before the end seen at its first fetch
        (the consumer skips ahead to it when this batch `msgs` ends before it)."""
        if tp not in self._untrimmed:
            return 0
        end = self._consumer.highwater(tp)
        if end is None:
            return 0
        self._untrimmed.discard(tp)
        start = max(0, end - self.history)
        if start and (not msgs or msgs[-1].offset + 1 < start):
            self._consumer.seek(tp, start)
        return start

    def stop(self) -> None:
        self._stopping = True

    async def close(self) -> None:
        self._stopping = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

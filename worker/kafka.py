"""Kafka plumbing shared by the worker and the replay tool (aiokafka).

Settings that matter with the embedded Tansu broker: producers use acks=all without
idempotence (Tansu has neither idempotent producers nor transactions), and positions
are never looked up by time or via ListOffsets (unreliable there): lag comes from
the fetch high-watermark and re-reads start from offsets the worker recorded itself.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)


# -- aiokafka internals, in one place --------------------------------------------------------
# The worker needs three things aiokafka has no public API for. Each is used only here, and
# tests/worker/test_kafka.py fails if the pinned aiokafka changes them.

# A commit during a rebalance can fail with an AssertionError from inside aiokafka's
# coordinator (not a KafkaError); either way the next commit retries.
COMMIT_ERRORS = (KafkaError, AssertionError)


async def commit(consumer: AIOKafkaConsumer, offsets: dict) -> None:
    """Commit tp -> (offset, metadata) for the consumer's group."""
    await consumer.commit({tp: OffsetAndMetadata(o, meta) for tp, (o, meta) in offsets.items()})


async def fetch_committed(consumer: AIOKafkaConsumer, tps) -> dict:
    """tp -> (offset, metadata) committed by the group, with the metadata (public
    `consumer.committed()` returns the offset only)."""
    got = await consumer._coordinator.fetch_committed_offsets(list(tps))
    return {tp: (om.offset, om.metadata) for tp, om in got.items() if om is not None}


def producer_closed(producer: AIOKafkaProducer) -> bool:
    """True once stop() began: a failed send is then not retried."""
    return bool(producer._closed)


def make_producer(brokers: str, client_id: str = "kronos-rt", linger_ms: int = 1) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=brokers, client_id=client_id, acks="all", enable_idempotence=False,
        linger_ms=linger_ms, max_batch_size=1 << 20, max_request_size=4 << 20,
    )


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        ("error.reason", reason.encode()),
        ("error.detail", detail.encode("utf-8", "replace")[:1024]),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
    ]


async def topic_partitions(brokers: str, topics: list[str] | None = None) -> dict[str, int]:
    """Existing topics -> partition count (only `topics` if given)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        described = await admin.describe_topics(topics) if topics else await admin.describe_topics()
    finally:
        await admin.close()
    out = {}
    for t in described:
        if t.get("error_code", 0) == 0 and t.get("partitions"):
            out[t["topic"]] = len(t["partitions"])
    return out


async def ensure_topics(brokers: str, topics: dict[str, int]) -> list[str]:
    """Create the topics (name -> partitions) that do not exist yet; returns those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if not missing:
            return []
        try:
            await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            pass  # another worker won the race
    finally:
        await admin.close()
    # Metadata for a new topic reaches clients a moment later.
    for _ in range(50):
        if set(topics) <= set(await topic_partitions(brokers, list(topics))):
            break
        await asyncio.sleep(0.1)
    return [t.name for t in missing]


async def read_partition(brokers: str, tp: TopicPartition, start: int, end: int,
                         timeout_s: float = 30.0) -> AsyncIterator:
    """Messages of one partition with start <= offset < end, read by a consumer outside any
    group (so the group's assignment and commits are untouched)."""
    if end <= start:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=brokers, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", client_id="kronos-rt-rebuild",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=2000)
            for msg in batch.get(tp, []):
                if msg.offset >= end:
                    return
                if msg.offset >= start:
                    yield msg
            if await consumer.position(tp) >= end:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"re-reading {tp} from {start} to {end} did not finish in {timeout_s}s")
    finally:
        await consumer.stop()

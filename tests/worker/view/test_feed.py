"""The view's Kafka reader against the embedded broker: group-less, every partition, bad
messages skipped and counted, topics that appear later picked up, history bounded."""
from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import unique_topic
from worker.adapters.kafka import ensure_topics, make_producer
from worker.view.feed import Feed
from worker.view.state import ViewState

from .messages import bar, forecast


async def publish(broker: str, topic: str, values: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = make_producer(broker)
    await producer.start()
    try:
        for key, value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def groups(broker: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        return {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def until(cond, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_reads_every_partition_skips_bad_messages_and_joins_no_group(broker):
    bars, fcs, scores = unique_topic("vbars"), unique_topic("vfc"), unique_topic("vscores")
    await ensure_topics(broker, {bars: 3, fcs: 2})
    await publish(broker, bars, [(s.encode(), bar(s, i, 10.0 + i)) for s in ("AAA", "BBB", "CCC") for i in range(5)]
                  + [(b"AAA", b"{broken"), (b"BBB", b'{"symbol": "BBB"}')])
    await publish(broker, fcs, [(b"AAA", forecast("AAA", 4, 14.0)), (b"CCC", b"not a forecast")])
    groups_before = await groups(broker)
    state = ViewState()
    feed = Feed(state, broker, {"bars": bars, "forecasts": fcs, "scores": scores}, refresh_s=0.3)
    await feed.start()
    task = asyncio.create_task(feed.run())
    try:
        await until(lambda: sum(state.stats["messages"].values()) >= 19)
        assert feed.partitions == {bars: 3, fcs: 2} and feed.missing == [scores]
        assert sorted(state.symbols) == ["AAA", "BBB", "CCC"]
        assert all(len(state.snapshot(s)["bars"]) == 5 for s in state.symbols)
        assert state.stats["invalid"] == {"bars": 2, "forecasts": 1}
        assert len(state.snapshot("AAA")["forecasts"]) == 1
        # a forecast published now arrives; the scores topic created later is found
        await publish(broker, fcs, [(b"BBB", forecast("BBB", 4, 14.0))])
        await ensure_topics(broker, {scores: 1})
        score = (b'{"schema": "score.v1", "symbol": "BBB", "as_of": "2024-01-02T09:55:00", '
                 b'"ts": "2024-01-02T10:00:00", "step": 1, "abs_error": 0.5}')
        await publish(broker, scores, [(b"BBB", score)])
        await until(lambda: state.snapshot("BBB")["forecasts"] and state.snapshot("BBB")["score"])
        assert feed.partitions[scores] == 1
    finally:
        feed.stop()
        await task
        await feed.close()
    assert await groups(broker) == groups_before  # it never joined (or committed for) any group


async def test_history_starts_each_partition_that_many_messages_before_its_end(broker):
    bars, fcs = unique_topic("vbars"), unique_topic("vfc")
    await ensure_topics(broker, {bars: 1, fcs: 1})
    await publish(broker, bars, [(b"AAA", bar("AAA", i, 10.0)) for i in range(40)])
    state = ViewState()
    feed = Feed(state, broker, {"bars": bars, "forecasts": fcs}, history=10, refresh_s=0.3)
    await feed.start()
    task = asyncio.create_task(feed.run())
    try:
        await until(lambda: "AAA" in state.symbols and len(state.snapshot("AAA")["bars"]) >= 10)
        await asyncio.sleep(0.5)
        await publish(broker, bars, [(b"AAA", bar("AAA", 40, 10.0))])
        await until(lambda: len(state.snapshot("AAA")["bars"]) == 11)
        times = [b[0] for b in state.snapshot("AAA")["bars"]]
        assert times == sorted(times) and state.stats["messages"]["bars"] == 11
    finally:
        feed.stop()
        await task
        await feed.close()

"""ForecastClient: parsing, dedup, latest-by-as_of, staleness; one run against the real broker."""
from __future__ import annotations

import asyncio
import datetime as dt

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import unique_topic
from kronos_rt_client.client import ForecastClient, parse_forecast
from worker.contracts.events import build_forecast
from worker.adapters.kafka import ensure_topics

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 6, 18, 10, 0)


def forecast(symbol: str, as_of: dt.datetime, produced_at: dt.datetime, version: str = "1.0.0",
             quantiles: bool = True, offset: int = 0) -> dict:
    times = [as_of + dt.timedelta(minutes=5 * (i + 1)) for i in range(3)]
    mean = np.array([[10.0 + i, 10.5 + i, 9.5 + i, 10.2 + i, 100.0, 1000.0] for i in range(3)])
    q = {0.1: mean - 1.0, 0.9: mean + 1.0} if quantiles else {}
    doc = build_forecast(
        symbol=symbol, as_of=as_of.strftime("%Y-%m-%dT%H:%M:%S"), interval_s=300, horizon_times=times,
        mean=mean, quantiles=q, model_name="kronos-small", model_version=version,
        sampling={"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 8, "lookback": 64, "pred_len": 3},
        latency_ms={"broker_to_received": 1.0, "queue_wait": 2.0, "inference": 30.0, "total": 35.0},
        topic="bars.5m", partition=0, offset=offset, worker_id="w1",
    )
    doc["produced_at"] = produced_at.isoformat(timespec="milliseconds")
    return doc


def test_parse_forecast_types():
    produced = dt.datetime(2024, 6, 18, 2, 0, 1, 250000, tzinfo=UTC)
    fc = parse_forecast(orjson.dumps(forecast("AAA", T0, produced, offset=7)), topic="f", partition=2, offset=9)
    assert fc.symbol == "AAA" and fc.as_of == T0 and fc.as_of_raw == "2024-06-18T10:00:00"
    assert fc.produced_at == produced and fc.produced_at.tzinfo is not None
    assert [s.ts for s in fc.horizon] == [T0 + dt.timedelta(minutes=5 * i) for i in (1, 2, 3)]
    assert fc.horizon[1].close == 11.2 and fc.horizon[0].volume == 100.0
    assert fc.quantile_levels == (0.1, 0.9)
    assert fc.band(0.1, 0.9)[0] == pytest.approx((9.2, 11.2))
    assert fc.quantile(0.9, "open") == [11.0, 12.0, 13.0]
    assert (fc.model_name, fc.model_version, fc.worker_id) == ("kronos-small", "1.0.0", "w1")
    assert fc.latency_ms["total"] == 35.0
    assert (fc.topic, fc.partition, fc.offset) == ("f", 2, 9)
    assert (fc.source_topic, fc.source_partition, fc.source_offset) == ("bars.5m", 0, 7)
    with pytest.raises(KeyError, match="quantile level 0.5"):
        fc.quantile(0.5)
    for bad in (b"nope", b"{}", orjson.dumps({**forecast("A", T0, produced), "as_of": "yesterday"}),
                orjson.dumps({k: v for k, v in forecast("A", T0, produced).items() if k != "horizon"})):
        with pytest.raises(ValueError):
            parse_forecast(bad)


def test_feed_dedup_is_bounded():
    client = ForecastClient("unused:9092", dedup_capacity=2)
    p = dt.datetime(2024, 6, 18, 2, 0, tzinfo=UTC)
    msgs = [orjson.dumps(forecast("A", T0 + dt.timedelta(minutes=5 * i), p)) for i in range(3)]
    assert client.feed(msgs[0]) is not None
    assert client.feed(msgs[0]) is None          # duplicate
    assert client.feed(msgs[1]) is not None
    assert client.feed(msgs[2]) is not None      # evicts msgs[0]'s key (least recently seen)
    assert client.feed(msgs[1]) is None          # still remembered
    assert client.feed(msgs[0]) is not None      # forgotten: capacity 2, so it passes again
    assert client.stats["duplicates"] == 2
    # A new model version at the same as_of is a different forecast.
    assert client.feed(orjson.dumps(forecast("A", T0, p, version="1.1.0"))) is not None


async def test_client_against_broker(broker):
    topic = unique_topic("forecasts")
    await ensure_topics(broker, {topic: 2})
    base = dt.datetime(2024, 6, 18, 2, 0, tzinfo=UTC)
    sent = [
        forecast("AAA", T0, base, offset=1),
        forecast("BBB", T0, base + dt.timedelta(seconds=1), offset=2),
        forecast("AAA", T0 + dt.timedelta(minutes=5), base + dt.timedelta(seconds=2), offset=3),
        forecast("AAA", T0, base, offset=1),                                   # redelivered duplicate
        forecast("AAA", T0 - dt.timedelta(minutes=5), base + dt.timedelta(seconds=3), offset=0),  # late, older as_of
        forecast("CCC", T0, base, offset=4),                                   # not subscribed
    ]
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for doc in sent:
            await producer.send_and_wait(topic, orjson.dumps(doc), key=doc["symbol"].encode())
        await producer.send_and_wait(topic, b"{not json", key=b"AAA")
    finally:
        await producer.stop()

    got = []
    client = ForecastClient(broker, topic=topic, symbols={"AAA", "BBB"}, from_beginning=True)
    await client.start()

    async def collect():
        async for fc in client:
            got.append(fc)

    task = asyncio.create_task(collect())
    try:
        for _ in range(300):  # until all 7 messages were read, or 30 s
            if client.stats["received"] == len(sent) + 1:
                break
            await asyncio.sleep(0.1)
    finally:
        await client.stop()  # ends the `async for` cleanly
        await asyncio.wait_for(task, 10)

    assert client.stats == {"received": 7, "yielded": 4, "duplicates": 1, "invalid": 1, "filtered": 1,
                            "out_of_order": 1}
    by_symbol = sorted((fc.symbol, fc.as_of) for fc in got)
    assert by_symbol == [("AAA", T0 - dt.timedelta(minutes=5)), ("AAA", T0), ("AAA", T0 + dt.timedelta(minutes=5)),
                         ("BBB", T0)]
    assert all(fc.topic == topic and fc.offset >= 0 for fc in got)

    # latest() keeps the newest as_of although an older one arrived after it.
    assert client.latest("AAA").as_of == T0 + dt.timedelta(minutes=5)
    assert client.latest("BBB").as_of == T0
    assert client.latest("CCC") is None

    now = base + dt.timedelta(seconds=12)
    assert client.staleness("AAA", now=now) == dt.timedelta(seconds=10)
    assert client.staleness("BBB", now=now) == dt.timedelta(seconds=11)
    assert client.staleness("AAA", basis="received") < dt.timedelta(seconds=30)
    with pytest.raises(KeyError):
        client.staleness("CCC")
    report = client.staleness_report(now=now)
    assert [(r.symbol, r.since_produced) for r in report] == [("BBB", dt.timedelta(seconds=11)),
                                                              ("AAA", dt.timedelta(seconds=10))]
    assert report[1].model == "kronos-small@1.0.0"

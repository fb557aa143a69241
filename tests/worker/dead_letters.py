"""Helpers for dead-letter tests: a corpus of bad messages, sending them through a worker,
and checking each one's DLQ copy."""
from __future__ import annotations

import asyncio
import time
from tests.worker.streams import consume, running_worker
from worker.adapters.kafka import make_producer
from worker.contracts.events import dumps


GOOD = {"symbol": "BAD-1", "ts": "2024-06-18T11:15:00", "open": 11.27, "high": 11.28, "low": 11.26,
        "close": 11.27, "volume": 379.0, "amount": 427161.0}


def doc(**change) -> bytes:
    d = dict(GOOD)
    d.update(change)
    return dumps(d)


# (key, value, expected error.reason)
CORPUS = [
    (b"BAD-1", b"{not json", "bad_json"),
    (b"BAD-1", b"", "bad_json"),
    (b"BAD-1", dumps({k: v for k, v in GOOD.items() if k != "close"}), "schema"),
    (b"BAD-1", doc(open="11.27"), "schema"),
    (b"BAD-1", doc()[:-1] + b',"close2":NaN}', "non_finite"),
    (b"BAD-1", b'{"symbol":"BAD-1","ts":"2024-06-18T11:15:00","open":NaN,"high":1,"low":1,"close":1}',
     "non_finite"),
    (b"BAD-1", doc(high=11.0, low=12.0), "high_low"),
    (b"BAD-1", doc(volume=-5.0), "negative_volume"),
    (b"BAD-1", doc(pad="x" * 5000), "oversized"),
    (b"bad sym", doc(symbol="bad sym"), "bad_symbol"),
    (b"OTHER", doc(), "key_mismatch"),
    (b"BAD-1", doc(ts="18/06/2024 11:15"), "bad_ts"),
]


async def send_through_worker(broker: str, settings, messages, n_forecasts: int, n_dead: int, producer=None):
    """Send (key, value) messages to the bars topic of a running worker; wait for n_forecasts
    forecasts and n_dead DLQ copies. (worker, forecast msgs, DLQ msgs, seconds from the last
    send acknowledged to the last forecast)."""
    async with running_worker(settings) as worker:
        producer = producer or make_producer(broker)
        await producer.start()
        try:
            futs = [await producer.send(settings.bars_topic, key=k, value=v) for k, v in messages]
            await asyncio.gather(*futs)
        finally:
            await producer.stop()
        t0 = time.monotonic()
        fc_msgs = await consume(broker, settings.forecasts_topic, lambda got: len(got) >= n_forecasts)
        recovery = time.monotonic() - t0
        dlq_msgs = await consume(broker, settings.dlq_topic, lambda got: len(got) >= n_dead)
        await asyncio.sleep(0.3)  # a moment for stray extras to show up
        assert not worker.stopping  # alive and consuming throughout
    return worker, fc_msgs, dlq_msgs, recovery


def check_dead_letters(dlq_msgs, offsets: list[int], corpus, topic: str) -> None:
    """Each DLQ copy: its reason, a detail, where it came from, and the original message
    (cut-down copies of oversized ones are checked by their test)."""
    assert len(dlq_msgs) == len(corpus)
    for msg, offset, (key, value, reason) in zip(dlq_msgs, offsets, corpus):
        h = {k: v for k, v in msg.headers}
        assert h["error.reason"].decode() == reason, h
        assert h["error.detail"]
        assert h["source.topic"].decode() == topic and h["source.partition"] == b"0"
        assert int(h["source.offset"]) == offset and msg.key == key
        if "source.truncated" not in h:
            assert msg.value == value  # the original event, untouched

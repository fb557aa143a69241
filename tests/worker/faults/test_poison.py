"""Poison (issue 10, items 4 and 5): messages that once crashed the worker into a restart
loop (deep JSON nesting, a bar dated 9999, a 10 MB value) or poisoned a symbol's window for
good (1e300 prices, a bar dated 2099, fractional seconds, off-grid or non-positive prices),
plus a bug while handling one message. Each lands on the DLQ with its reason, the worker stays
up, and every later bar of the same partition and symbol gets the forecast it would have got
without the poison."""
from __future__ import annotations

import hashlib
from collections import Counter

import pandas as pd
import pytest
from aiokafka import AIOKafkaProducer

from tests.worker.faults.report import tally
from tests.worker.streams import (
    MIN_HISTORY, TAPE, Offline, expected_keys, forecasts_of, make_settings, names, one_torch_thread,
)
from tests.worker.dead_letters import check_dead_letters, send_through_worker
from worker.contracts.events import dumps
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare
from worker.tools.tape import bar_events

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


def _poison(symbol: str, last_ts: str) -> list[tuple[bytes, bytes, str]]:
    """(key, value, expected reason) of messages that once crashed the worker or poisoned a
    symbol's window, aimed at `symbol`, whose newest good bar is at `last_ts`."""
    t = pd.Timestamp(last_ts)
    nxt = (t + pd.Timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    good = {"symbol": symbol, "ts": nxt, "open": 11.27, "high": 11.28, "low": 11.26, "close": 11.27,
            "volume": 379.0, "amount": 427161.0}

    def bar(**change) -> bytes:
        return dumps(dict(good, **change))

    k = symbol.encode()
    return [
        (k, b"[" * 1950 + b"]" * 1950, "bad_json"),                       # RecursionError in the stdlib decoder
        (k, bar(ts="9999-12-31T23:55:00"), "future_ts"),                    # OverflowError in the calendar
        (k, b'{"symbol":"' + k + b'","pad":"' + b"x" * 10_000_000 + b'"}', "oversized"),  # DLQ copy > request size
        (k, bar(open=1e300, high=1e300, low=1e300, close=1e300), "out_of_range"),  # symbol dead afterwards
        (k, bar(ts="2099-06-18T11:15:00"), "future_ts"),                    # every real bar "out of order"
        (k, bar(ts=nxt + ".500"), "sub_second"),                           # would overwrite another bar
        (k, bar(ts=(t + pd.Timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S")), "off_grid"),
        (k, bar(open=0.0, low=0.0), "non_positive_price"),
        (k, bar(open=-1.0, low=-1.0), "non_positive_price"),
        (b"BOOM", dumps(dict(good, symbol="BOOM")), "internal_error"),     # a bug while handling it
    ]


async def test_poison_never_stops_the_partition_and_its_symbol_keeps_forecasting(
        broker, redis_url, redis_prefix, monkeypatch):
    from worker.pipeline.ingest import Ingest

    handle = Ingest.handle

    async def buggy(self, state, msg, parsed):
        if msg.key == b"BOOM":
            raise ZeroDivisionError("a bug nobody foresaw")
        return await handle(self, state, msg, parsed)

    monkeypatch.setattr(Ingest, "handle", buggy)

    topics = names("poison")
    await ensure_topics(broker, {topics["bars_topic"]: 1})
    rows = prepare(TAPE, fanout=2, limit=50)
    want = expected_keys(rows)
    valid = [(sym, bar) for sym, bar, _ in bar_events(rows)]
    target = valid[0][0]
    # Poison for `target` after its 40th bar (past min_history), then its remaining good bars.
    messages, seen, poison_at, corpus = [], 0, [], []
    for sym, bar in valid:
        messages.append((sym.encode(), dumps(bar)))
        seen += sym == target
        if sym == target and seen == 40:
            corpus = _poison(target, bar["ts"])
            poison_at = list(range(len(messages), len(messages) + len(corpus)))
            messages.extend((k, v) for k, v, _ in corpus)
    assert corpus and seen > 40  # good bars of the target follow its poison

    settings = make_settings(broker, redis_url, redis_prefix, topics)
    big = AIOKafkaProducer(bootstrap_servers=broker, acks="all", max_request_size=16 << 20)  # 10 MB fits
    worker, fc_msgs, dlq_msgs, recovery = await send_through_worker(broker, settings, messages, len(want), len(corpus),
                                                                    producer=big)

    # Every good bar forecast once, the target's bars after the poison too.
    row = tally("poison (10 messages)", len(valid), want, fc_msgs, recovery, note="all on the DLQ, worker up")
    assert row.lost == 0 and row.duplicates == 0
    counts = Counter((f["symbol"], f["as_of"]) for f in forecasts_of(fc_msgs))
    assert set(counts) == want and max(counts.values()) == 1
    offline = Offline(rows)
    later = [f for f in forecasts_of(fc_msgs) if f["symbol"] == target][40 - MIN_HISTORY:][:3]
    for fc in later:  # same forecast as if the poison had never been sent
        offline.check(fc)

    check_dead_letters(dlq_msgs, poison_at, corpus, topics["bars_topic"])
    for msg, (key, value, reason) in zip(dlq_msgs, corpus):
        h = {k: v for k, v in msg.headers}
        if reason == "oversized":  # a cut-down copy that says what it was
            assert h["source.truncated"] == b"1" and int(h["source.value_size"]) == len(value)
            assert h["source.value_sha256"].decode() == hashlib.sha256(value).hexdigest()
            assert value.startswith(msg.value) and len(msg.value) < 1_000_000
        if reason == "internal_error":
            assert h["error.detail"].startswith(b"ZeroDivisionError")
    assert worker.stats["dlq"] == len(corpus)

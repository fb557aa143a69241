"""Malformed events go to the dead-letter topic with their reason; the valid bars between
them are all forecast."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.worker.streams import (
    TAPE, expected_keys, forecasts_of, make_settings, names, one_torch_thread,
)
from worker.contracts.events import dumps
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare
from worker.tools.tape import bar_events
from tests.worker.dead_letters import CORPUS, check_dead_letters, send_through_worker

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


async def test_malformed_events_land_on_dlq_and_valid_bars_are_forecast(broker, redis_url, redis_prefix):
    topics = names("dlq")
    await ensure_topics(broker, {topics["bars_topic"]: 1})
    rows = prepare(TAPE, fanout=2, limit=45)
    want = expected_keys(rows)
    # Interleave: after every 7th valid bar, one malformed event.
    valid = [(sym.encode(), dumps(bar)) for sym, bar, _ in bar_events(rows)]
    messages, bad_at = [], []
    for i, kv in enumerate(valid):
        messages.append(kv)
        if i % 7 == 3 and len(bad_at) < len(CORPUS):
            bad_at.append(len(messages))
            messages.append(CORPUS[len(bad_at) - 1][:2])
    assert len(bad_at) == len(CORPUS)

    settings = make_settings(broker, redis_url, redis_prefix, topics)
    worker, fc_msgs, dlq_msgs, _ = await send_through_worker(broker, settings, messages, len(want), len(CORPUS))

    counts = Counter((f["symbol"], f["as_of"]) for f in forecasts_of(fc_msgs))
    assert set(counts) == want and max(counts.values()) == 1
    check_dead_letters(dlq_msgs, bad_at, CORPUS, topics["bars_topic"])
    assert worker.stats["dlq"] == len(CORPUS)
    by_reason = Counter(reason for _, _, reason in CORPUS)
    for reason, n in by_reason.items():
        assert worker.metrics.dlq.labels(reason=reason)._value.get() == n
    assert json.loads(fc_msgs[0].value)["schema"] == "forecast.v1"

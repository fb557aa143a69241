"""Shadow models end to end (broker + Redis + worker, parity checkpoint, greedy): the
primary's forecasts are bit-identical with and without a shadow and never wait for one;
shadow forecasts go to <topic>.shadow under the shadow's version and are scored apart;
under backpressure or a slow shadow, shadow windows are skipped and counted."""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from kronos_rt.registry import Registry
from tests.worker.streams import (
    MODEL, TAPE, TOKENIZER, consume, expected_keys, forecasts_of, make_settings, names, one_torch_thread,
    running_worker,
)
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


@pytest.fixture
def registry(tmp_path):
    """A registry holding the parity checkpoint as parity@0.2.0 (the candidate)."""
    Registry(tmp_path / "registry").import_dirs("parity", MODEL, TOKENIZER, version="0.2.0")
    return str(tmp_path / "registry")


def by_key(fcs: list[dict]) -> dict:
    return {(f["symbol"], f["as_of"]): f for f in fcs}


def paths(f: dict) -> list:
    """What the model said (latency, worker and calibration aside)."""
    return [{k: v for k, v in h.items() if k != "calibrated_quantiles"} for h in f["horizon"]]


async def test_primary_is_bit_identical_with_a_shadow_and_the_shadow_is_published_and_scored(
        broker, redis_url, redis_prefix, registry):
    rows = prepare(TAPE, fanout=2, limit=60)
    want = expected_keys(rows)
    runs = {}
    for tag, over in (("plain", {}), ("shadowed", {"shadow": "parity@0.2.0", "shadow_max_queue": 4096})):
        topics = names(f"shadow-{tag}")
        await ensure_topics(broker, {topics["bars_topic"]: 2})
        scores_topic = topics["forecasts_topic"] + ".scores"
        settings = make_settings(broker, redis_url, f"{redis_prefix}:{tag}", topics, registry=registry,
                                 scores_topic=scores_topic, calibration_window=64, calibration_min_scores=8, **over)
        async with running_worker(settings) as worker:
            await replay(rows, broker, topics["bars_topic"])
            fmsgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))
            smsgs = shadow = []
            if over:
                shadow = await consume(broker, topics["forecasts_topic"] + ".shadow",
                                       lambda got: len(got) >= len(want))
                smsgs = await consume(broker, scores_topic, lambda got: sum(
                    json.loads(m.value).get("shadow", False) for m in got) >= 4 * (len(want) // 2 - 8))
                await asyncio.sleep(0.3)
                smsgs = await consume(broker, scores_topic, lambda got: len(got) >= len(smsgs))
        runs[tag] = (forecasts_of(fmsgs), forecasts_of(shadow), [json.loads(m.value) for m in smsgs], worker)

    plain, shadowed = by_key(runs["plain"][0]), by_key(runs["shadowed"][0])
    assert set(plain) == set(shadowed) == want
    for k in want:  # the primary's forecasts do not move a bit with a shadow beside it
        assert paths(shadowed[k]) == paths(plain[k]), k
        assert shadowed[k]["model"] == plain[k]["model"] and "shadow" not in shadowed[k]

    _, shadow_fcs, scores, worker = runs["shadowed"]
    shadows = by_key(shadow_fcs)
    assert set(shadows) == want and len(shadow_fcs) == len(want)
    for k, f in shadows.items():  # same checkpoint, same windows: the same bits, under its own name
        assert f["model"]["name"] == "parity" and f["model"]["version"] == "0.2.0" and f["shadow"] is True
        assert paths(f) == paths(plain[k])
        assert "calibrated_quantiles" not in f["horizon"][0]  # the calibration is the primary's
    sh = worker.shadows.metrics
    assert sh.forecasts.labels("parity", "0.2.0")._value.get() == len(want)

    # Scored apart, the same way: every step the primary got a score for, the shadow did too.
    new = [s for s in scores if s["kind"] == "new"]
    prim = {(s["symbol"], s["as_of"], s["step"]): s for s in new if "shadow" not in s}
    shad = {(s["symbol"], s["as_of"], s["step"]): s for s in new if s.get("shadow")}
    assert {s["model"]["version"] for s in shad.values()} == {"0.2.0"}
    assert prim and set(shad) == set(prim)
    for k, s in shad.items():
        assert s["abs_error"] == prim[k]["abs_error"] and s["persistence_abs_error"] == prim[k]["persistence_abs_error"]
    assert max(Counter(k for k in (((s["symbol"], s["as_of"], s["step"]) for s in new if s.get("shadow")))).values()) == 1
    q = worker.metrics.quality
    assert sum(q.scores.labels("parity", "0.2.0", str(h), "new")._value.get() for h in range(1, 5)) == len(shad)


async def test_slow_shadows_and_a_busy_primary_skip_shadow_windows_and_never_hold_the_primary(
        broker, redis_url, redis_prefix, registry):
    topics = names("shadow-busy")
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=2, limit=70)
    want = expected_keys(rows)
    settings = make_settings(broker, redis_url, redis_prefix, topics, registry=registry, max_batch=2,
                             max_queue=16, shadow="parity@0.2.0", shadow_max_queue=3)

    def slow_primary(worker):
        worker.observe_batches(lambda items, seconds: time.sleep(0.01))  # the queue builds up

    async with running_worker(settings, before_run=slow_primary) as worker:
        m = worker.shadows.models[0]
        fast = m.inference.compute

        def slow(items):  # a shadow slower than the feed: it falls behind
            time.sleep(0.05)
            return fast(items)
        m.inference.compute = slow
        await replay(rows, broker, topics["bars_topic"])
        fmsgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))
        # Commits never wait for a shadow: every bar is done while shadow work may still be queued.
        deadline = time.monotonic() + 20
        while worker._outstanding() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert worker._outstanding() == 0
        while worker.shadows.pending and time.monotonic() < deadline + 20:
            await asyncio.sleep(0.05)
        sh = worker.shadows.metrics
        labels = ("parity", "0.2.0")
        published = sh.forecasts.labels(*labels)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            skipped = {r: sh.skipped.labels(*labels, r)._value.get() for r in ("backpressure", "behind")}
            if published._value.get() + sum(skipped.values()) >= len(want):
                break
            await asyncio.sleep(0.05)
        shadow = await consume(broker, topics["forecasts_topic"] + ".shadow",
                               lambda got: len(got) >= published._value.get())

    counts = Counter((f["symbol"], f["as_of"]) for f in forecasts_of(fmsgs))
    assert set(counts) == want and max(counts.values()) == 1  # the primary: complete, once each
    assert skipped["backpressure"] > 0 and sum(skipped.values()) < len(want)
    # Every window was either forecast by the shadow or skipped and counted: none went astray.
    assert published._value.get() + sum(skipped.values()) + sh.errors.labels(*labels)._value.get() == len(want)
    assert len(shadow) == published._value.get()
    assert {(f["symbol"], f["as_of"]) for f in forecasts_of(shadow)} <= want

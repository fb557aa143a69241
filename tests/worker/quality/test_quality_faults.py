"""Live scoring under faults: a worker killed -9 mid-replay and a Redis FLUSHALL. Scores are
re-published by whoever re-reads the bars (at-least-once, identical figures), or, for
forecasts Redis lost, simply absent: never wrong, never made up."""
from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest
import redis

from tests.worker.streams import (
    TAPE, consume, expected_keys, forecasts_of, make_settings, names, one_torch_thread, running_worker,
)
from tests.worker.processes import WorkerProcess, wait_for
from tests.worker.quality.scores import hand_scores
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too

FIGURES = ("abs_error", "persistence_abs_error", "drift_abs_error")


def check_scores(scores: list[dict], want: dict) -> dict:
    """Every score equals the hand computation of its (symbol, as_of, step); returns them by key."""
    by_key = defaultdict(list)
    for s in scores:
        key = (s["symbol"], s["as_of"], s["step"])
        assert key in want, f"a score for a step that was never forecast or realized: {key}"
        for k in FIGURES:
            assert s[k] == pytest.approx(want[key][k], rel=1e-6, abs=1e-9), (k, s)
        assert s["direction_hit"] == want[key]["direction_hit"]
        by_key[key].append(s)
    return by_key


def unique(fcs: list[dict]) -> list[dict]:
    return list({(f["symbol"], f["as_of"]): f for f in fcs}.values())


async def test_scores_survive_a_worker_kill9(broker, redis_url, redis_prefix, tmp_path):
    topics = names("score-kill")
    scores_topic = topics["forecasts_topic"] + ".scores"
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=2, limit=90)
    want_fc = expected_keys(rows)
    phases = [prepare(TAPE, fanout=2, skip=a, limit=b - a) for a, b in ((0, 45), (45, 70), (70, 90))]
    w = WorkerProcess("worker-s", broker, redis_url, redis_prefix, topics, tmp_path)
    w.args += ["--scores-topic", scores_topic]
    w.start()
    try:
        await wait_for(lambda: w.partitions() == [0, 1], 60, "the assignment", (w,))
        await replay(phases[0], broker, topics["bars_topic"])
        await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(expected_keys(phases[0])))
        send = asyncio.create_task(replay(phases[1], broker, topics["bars_topic"], speed=30000))
        await asyncio.sleep(0.3)
        w.kill9()  # mid-phase: forecasts and scores in flight, claims marked in Redis but not sent
        await send
        w.start()
        await wait_for(lambda: w.partitions() == [0, 1], 60, "the restart's assignment", (w,))
        await replay(phases[2], broker, topics["bars_topic"])
        fmsgs = await consume(broker, topics["forecasts_topic"],
                              lambda got: {(f["symbol"], f["as_of"]) for f in forecasts_of(got)} >= want_fc,
                              timeout=90)
        want = hand_scores(unique(forecasts_of(fmsgs)), rows)
        smsgs = await consume(broker, scores_topic, lambda got: {
            (s["symbol"], s["as_of"], s["step"]) for s in map(json.loads, (m.value for m in got))} >= set(want),
            timeout=60)
    finally:
        code = w.terminate()
    assert code == 0, w.log()[-3000:]
    by_key = check_scores([json.loads(m.value) for m in smsgs], want)
    assert set(by_key) == set(want)  # every realized step scored, kill or not
    assert {s["kind"] for ss in by_key.values() for s in ss} <= {"new", "redelivered"}


async def test_scores_after_a_redis_flush_are_right_or_absent(broker, private_redis):
    topics = names("score-flush")
    scores_topic = topics["forecasts_topic"] + ".scores"
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=2, limit=100)
    before = prepare(TAPE, fanout=2, limit=60)
    after = prepare(TAPE, fanout=2, skip=60, limit=40)
    settings = make_settings(broker, private_redis, "krt", topics, scores_topic=scores_topic,
                             calibration_window=64, calibration_min_scores=8)
    async with running_worker(settings) as worker:
        await replay(before, broker, topics["bars_topic"])
        n_before = len(expected_keys(before))
        await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= n_before)
        await asyncio.sleep(0.5)  # the scores of what is realized so far go out
        client = redis.Redis.from_url(private_redis)
        client.flushall()  # stored forecasts, scoring marks, windows and calibration state: gone
        client.close()
        await replay(after, broker, topics["bars_topic"])
        fmsgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(expected_keys(rows)))
        fcs = forecasts_of(fmsgs)
        want = hand_scores(fcs, rows)
        # Forecasts made after the flush have all their realized steps scored.
        after_ts = {t.strftime("%Y-%m-%dT%H:%M:%S") for t in after["time"]}
        later = {k for k in want if k[1] in after_ts}
        smsgs = await consume(broker, scores_topic, lambda got: {
            (s["symbol"], s["as_of"], s["step"]) for s in map(json.loads, (m.value for m in got))} >= later)
        await asyncio.sleep(0.3)

    by_key = check_scores([json.loads(m.value) for m in smsgs], want)
    assert set(by_key) >= later and worker.stats["rebuilds"] >= 1
    # Steps of forecasts Redis lost, realized after the flush: not scored (absent), never guessed.
    lost = {k for k in want if k[1] not in after_ts and k not in by_key}
    assert lost
    for ss in by_key.values():  # one first score each; redeliveries repeat it
        assert sum(s["kind"] == "new" for s in ss) == 1
    # The calibration starts again from what the worker still held: forecasts keep their bands.
    assert any("calibrated_quantiles" in h for f in fcs if f["as_of"] in after_ts for h in f["horizon"])

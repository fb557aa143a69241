"""A worker on highly available Redis (servers from tests/conftest.py fixtures) while its
primary is killed (kill -9) mid-stream: behind Sentinel the replica is promoted, on a
3-master Cluster with replicas one master's replica is. The worker says 503 with the
reason meanwhile, follows the promoted node, rebuilds the windows from the bar topic
(a promoted replica may miss the old primary's last writes), and every owed forecast is
published with the very numbers a single-node run gives."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis

from tests.worker.faults.report import covered, readyz, tally
from tests.worker.streams import (
    TAPE, consume, expected_keys, make_settings, names, one_torch_thread, running_worker,
)
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay
from worker.tools.services import RedisServer

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too

SYMBOLS, BEFORE, DURING = 6, 60, 50
SPEED = 3000  # 5-minute bars: one bar time every 0.1 s, so bars keep coming through the failover


def _horizons(msgs) -> dict:
    out = {}
    for m in msgs:
        doc = json.loads(m.value)
        out.setdefault((doc["symbol"], doc["as_of"]), doc["horizon"])
    return out


async def _watch(broker: str, topic: str, arrivals: list) -> None:
    """A subscriber: the wall-clock time each forecast reaches it, until cancelled."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, group_id=None, auto_offset_reset="latest")
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            now = time.monotonic()
            arrivals.extend((now, m) for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()


def _gap_s(arrivals, t_kill: float, msgs) -> tuple[float, float]:
    """Across the failover, as a subscriber sees it: the longest stretch with no forecast from
    the kill on, and the worst bar -> forecast latency of the forecasts published meanwhile."""
    times = [t_kill] + sorted(t for t, _ in arrivals if t >= t_kill)
    late = [m for t, m in arrivals if t >= t_kill]
    worst = max((json.loads(m.value)["latency_ms"]["total"] for m in late), default=0.0)
    return round(max((b - a for a, b in zip(times, times[1:])), default=0.0), 2), round(worst / 1000, 2)


async def _stream(broker, tag: str, url: str, kill=None):
    """Replay BEFORE bars per symbol and wait for their forecasts; `kill()`; replay DURING more
    at SPEED while watching /readyz; wait for every owed forecast and /readyz 200.
    Returns (rows, owed, messages, seconds from kill to the last owed forecast, 503 bodies seen,
    /readyz body before and after, the gap in output, worker)."""
    topics = names(tag)
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=SYMBOLS, limit=BEFORE + DURING)
    want = expected_keys(rows)
    before = prepare(TAPE, fanout=SYMBOLS, limit=BEFORE)
    during = prepare(TAPE, fanout=SYMBOLS, skip=BEFORE, limit=DURING)
    settings = make_settings(broker, url, "krt", topics)
    down: list[dict] = []
    async with running_worker(settings) as worker:
        await replay(before, broker, topics["bars_topic"])
        await consume(broker, topics["forecasts_topic"], lambda got: covered(got) >= expected_keys(before),
                      timeout=90)
        first = readyz(worker.metrics_port)
        arrivals: list = []
        watching = asyncio.create_task(_watch(broker, topics["forecasts_topic"], arrivals))
        await asyncio.sleep(1.0)  # subscribed before anything new is sent
        sending = asyncio.create_task(replay(during, broker, topics["bars_topic"], speed=SPEED,
                                              max_gap="5m"))  # overnight: no 20 s pause
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        if kill is not None:
            kill()
        while not sending.done():
            status, body = readyz(worker.metrics_port)
            if status == 503:
                down.append(body)
            await asyncio.sleep(0.1)
        await sending
        msgs = await consume(broker, topics["forecasts_topic"], lambda got: covered(got) >= want, timeout=120)
        took = time.monotonic() - t0
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        deadline = time.monotonic() + 20
        while readyz(worker.metrics_port)[0] != 200:
            assert time.monotonic() < deadline, "/readyz did not say 200 again"
            await asyncio.sleep(0.1)
        last = readyz(worker.metrics_port)
    return rows, want, msgs, took, down, first, last, _gap_s(arrivals, t0, msgs), worker


_REFERENCE: dict = {}


async def single_node_forecasts(broker):
    """The reference, run once per module: the same bars on one plain redis-server, nothing killed."""
    if not _REFERENCE:
        with RedisServer() as server:
            _, want, msgs, *_, gap, _ = await _stream(broker, "redis-single", server.url)
        assert covered(msgs) >= want
        _REFERENCE.update(horizons=_horizons(msgs), gap=gap)
    return _REFERENCE["horizons"], _REFERENCE["gap"]


def _check(scenario, rows, want, msgs, took, down, first, last, gap, worker, reference, topology):
    row = tally(scenario, len(rows), want, msgs, took,
                note=f"output gap {gap[0]:.1f} s, worst bar->forecast {gap[1]:.1f} s")
    assert row.lost == 0 and row.identical
    mine = _horizons(msgs)
    assert {k: mine[k] for k in want} == {k: reference[k] for k in want}  # the single-node run's numbers
    assert first[0] == last[0] == 200
    assert first[1]["redis_topology"] == last[1]["redis_topology"] == topology
    assert first[1]["redis_node"] != last[1]["redis_node"]  # it follows the promoted node
    assert down, "/readyz never said 503 while Redis failed over"
    assert all(b["redis"] is False and b["redis_error"] for b in down)
    assert worker.stats["rebuilds"] >= 1  # the promoted node's windows were rebuilt from the bar topic
    return row


async def test_sentinel_failover_mid_stream(broker, redis_sentinel):
    reference, base_gap = await single_node_forecasts(broker)
    g = redis_sentinel
    rows, want, msgs, took, down, first, last, gap, worker = await _stream(
        broker, "redis-sentinel", g.url, kill=g.primary.kill)
    _check("Sentinel failover (kill -9 primary)", rows, want, msgs, took, down, first, last, gap, worker,
           reference, "sentinel")
    assert first[1]["redis_node"] == g.primary.addr and last[1]["redis_node"] == g.replicas[0].addr
    print(f"\nSentinel failover: output gap, worst bar->forecast {gap} s (single node, nothing killed: {base_gap}); "
          f"kill -> last owed forecast {took:.1f} s; 503 bodies seen: {len(down)}")


async def test_cluster_master_failover_mid_stream(broker, redis_cluster_ha):
    reference, base_gap = await single_node_forecasts(broker)
    c = redis_cluster_ha
    prefix_keys = lambda n: list(redis.Redis(port=n.port).scan_iter(match="krt:*"))  # noqa: E731
    victim = c.primaries()[0]

    rows, want, msgs, took, down, first, last, gap, worker = await _stream(
        broker, "redis-cluster", c.url, kill=victim.kill)
    _check("Cluster master failover (kill -9)", rows, want, msgs, took, down, first, last, gap, worker,
           reference, "cluster")
    assert victim.addr in first[1]["redis_node"] and victim.addr not in last[1]["redis_node"]
    assert all(len(prefix_keys(n)) > 0 for n in c.primaries())  # windows spread over the 3 masters
    print(f"\nCluster master failover: output gap, worst bar->forecast {gap} s (single node: {base_gap}); "
          f"kill -> last owed forecast {took:.1f} s; 503 bodies seen: {len(down)}")


async def _scored(broker, tag: str, url: str) -> tuple[dict, dict]:
    """Forecasts and scores (live scoring and calibration on) of one run: {(symbol, as_of): horizon},
    {(symbol, as_of, step): (abs_error, calibration)}."""
    topics = names(tag)
    scores_topic = topics["forecasts_topic"] + ".scores"
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=4, limit=80)
    want = expected_keys(rows)
    known = {(s, t.strftime("%Y-%m-%dT%H:%M:%S")) for s, t in zip(rows["symbol"], rows["time"])}
    settings = make_settings(broker, url, "krt", topics, scores_topic=scores_topic, calibration_window=64,
                             calibration_min_scores=8)
    async with running_worker(settings):
        await replay(rows, broker, topics["bars_topic"])
        fmsgs = await consume(broker, topics["forecasts_topic"], lambda got: covered(got) >= want, timeout=120)
        # Every realized step of every forecast, by key: a count would stop early on a rescored
        # step and compare two runs cut at different points.
        owed = {(fc["symbol"], fc["as_of"], step) for fc in map(json.loads, (m.value for m in fmsgs))
                for step, h in enumerate(fc["horizon"], 1) if (fc["symbol"], h["ts"]) in known}
        smsgs = await consume(broker, scores_topic, lambda got: _score_keys(got) >= owed, timeout=60)
    scores = {}
    for m in smsgs:
        d = json.loads(m.value)
        key = (d["symbol"], d["as_of"], d["step"])
        if key in owed:
            scores[key] = (d["abs_error"], json.dumps(d["calibration"], sort_keys=True))
    return _horizons(fmsgs), scores


def _score_keys(msgs) -> set:
    return {(d["symbol"], d["as_of"], d["step"]) for d in map(json.loads, (m.value for m in msgs))}


async def test_scoring_and_calibration_on_a_cluster_equal_a_single_node(broker, redis_cluster):
    """Live scoring keeps its stored forecasts, claims and calibration pools in Redis: on a
    3-master cluster the forecasts and every score equal one server's, and calibrated bands
    appear. (Which bands a forecast gets depends on how many scores were in when it was made,
    a matter of timing on any Redis, so those are not compared.)"""
    with RedisServer() as server:
        single = await _scored(broker, "score-single", server.url)
    on_cluster = await _scored(broker, "score-cluster", redis_cluster.url)

    def uncalibrated(horizons):
        return {k: [{f: v for f, v in h.items() if f != "calibrated_quantiles"} for h in hs]
                for k, hs in horizons.items()}

    assert uncalibrated(single[0]) == uncalibrated(on_cluster[0])
    assert {k: v[0] for k, v in single[1].items()} == {k: v[0] for k, v in on_cluster[1].items()}
    assert len(single[1]) > 100
    assert any("calibrated_quantiles" in h for hs in on_cluster[0].values() for h in hs)

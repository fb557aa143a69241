"""worker/quality/live.py on real Redis: stored forecasts are claimed once per realized value,
corrections re-score, redeliveries re-publish, unknown symbols and flushes claim nothing,
calibration state survives a new worker (its cache) through Redis."""
from __future__ import annotations

import datetime as _dt
import math
from types import SimpleNamespace

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from worker.adapters.keys import RedisKeys
from worker.quality.live import Claim, Quality, QualityMetrics

T0 = _dt.datetime(2024, 1, 2, 10, 0)
STEP = _dt.timedelta(minutes=5)
P = 3


def quality(client, prefix, **over) -> Quality:
    kw = dict(pred_len=P, levels=(0.1, 0.5, 0.9), metrics=QualityMetrics(CollectorRegistry()), window=16,
              min_scores=2)
    kw.update(over)
    return Quality(client, RedisKeys(prefix), **kw)


def forecast(closes_ahead, quantiles=None):
    mean = np.zeros((P, 6))
    mean[:, 3] = closes_ahead
    q = {} if quantiles is None else {lv: np.tile(np.asarray(v)[:, None], (1, 6)) for lv, v in quantiles.items()}
    return SimpleNamespace(mean=mean, quantiles=q, paths=None)


def window_of(closes):
    v = np.zeros((len(closes), 6))
    v[:, 3] = closes
    return v


async def claim(q, symbol, t, close, offset):
    pipe = q.redis.pipeline(transaction=False)
    await q.claim_into(pipe, symbol, t, close, offset)
    (reply,) = await pipe.execute()
    return q.score(q.claims(reply, close))


@pytest.fixture
async def client(redis_url):
    c = aioredis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_a_step_is_scored_once_then_rescored_on_correction(client, redis_prefix):
    q = quality(client, redis_prefix)
    ref = SimpleNamespace(name="m", version="1")
    horizon = [T0 + STEP * k for k in range(1, P + 1)]
    rec = q.record("AAA", "2024-01-02T10:00:00", horizon, window_of([9.0, 9.5, 10.0]), forecast([10.5, 11.0, 11.5]), ref)
    assert await q.store([(rec, horizon, None)]) == [[]]

    [s] = await claim(q, "AAA", horizon[0], 10.2, 100)
    assert (s["step"], s["kind"], s["as_of"]) == (1, "new", "2024-01-02T10:00:00")
    assert s["abs_error"] == pytest.approx(0.3) and s["persistence_abs_error"] == pytest.approx(0.2)
    assert s["drift_abs_error"] == pytest.approx(abs(10.0 + 0.5 - 10.2))  # drift 0.5 per bar
    assert s["direction_hit"] is True
    assert await claim(q, "AAA", horizon[0], 10.2, 101) == []        # the same value again: nothing
    [again] = await claim(q, "AAA", horizon[0], 10.2, 100)            # the same message re-read
    assert again["kind"] == "redelivered"
    [fix] = await claim(q, "AAA", horizon[0], 10.6, 102)              # a correction
    assert fix["kind"] == "rescore" and fix["previous_close"] == pytest.approx(10.2)
    assert fix["abs_error"] == pytest.approx(0.1)
    assert await claim(q, "BBB", horizon[0], 1.0, 5) == []            # no stored forecast: not an error
    scored = q.metrics.scores.labels("m", "1", "1", "new")._value.get()
    assert scored == 1


async def test_steps_already_in_the_window_are_scored_when_stored(client, redis_prefix):
    q = quality(client, redis_prefix)
    ref = SimpleNamespace(name="m", version="1")
    horizon = [T0 + STEP * k for k in range(1, P + 1)]
    rec = q.record("AAA", "2024-01-02T10:00:00", horizon, window_of([10.0, 10.0]), forecast([10.5, 11.0, 11.5]), ref)
    times = np.array([T0, horizon[0], horizon[1]], dtype="datetime64[s]")
    win = SimpleNamespace(times=times, values=window_of([10.0, 10.1, 10.4]), offsets=np.array([7, 8, 9]))
    [claims] = await q.store([(rec, horizon, win)])
    docs = q.score(claims)
    assert [(d["step"], d["realized_close"]) for d in docs] == [(1, 10.1), (2, 10.4)]
    assert await claim(q, "AAA", horizon[1], 10.4, 10) == []          # the bar itself arrives late: scored already
    [last] = await claim(q, "AAA", horizon[2], 11.0, 11)
    assert last["abs_error"] == pytest.approx(0.5)


async def test_calibration_state_reaches_another_worker_and_nan_stays_out(client, redis_prefix):
    q = quality(client, redis_prefix)
    ref = SimpleNamespace(name="m", version="1")
    rng = np.random.default_rng(0)
    for i in range(12):
        as_of = T0 + STEP * 10 * i
        horizon = [as_of + STEP * k for k in range(1, P + 1)]
        await q.load(["AAA"])
        rec = q.record("AAA", as_of.isoformat(), horizon, window_of(10 + rng.normal(0, 0.1, 30)),
                       forecast([10.0] * P), ref)
        await q.store([(rec, horizon, None)])
        for k, t in enumerate(horizon):
            await claim(q, "AAA", t, 10 + rng.normal(0, 0.1), 100 * i + k)
    await claim(q, "AAA", T0 + STEP * 200, math.nan, 1)  # nothing stored there; NaN harmless anyway
    await q.flush()
    other = quality(client, redis_prefix)
    await other.load(["AAA"])
    mine, theirs = q.calibrator("AAA")[1], other.calibrator("AAA")[1]
    assert theirs.scores() == 12
    np.testing.assert_array_equal(theirs.offsets(2), mine.offsets(2))
    assert np.all(np.isfinite(theirs.buf))
    rec = other.record("AAA", "x", [T0] * P, window_of([10.0, 10.1, 10.0]), forecast([10.0] * P), ref)
    assert rec.cal_q is not None and rec.cal_n == 12
    assert all(lo <= mid <= hi for lo, mid, hi in rec.cal_q)


class _NoScripts:
    def register_script(self, _):
        return None


def test_a_claim_whose_forecast_is_gone_or_too_short_is_skipped_not_scored():
    q = quality(_NoScripts(), "p")
    ref = SimpleNamespace(name="m", version="1")
    horizon = [T0 + STEP * k for k in range(1, P + 1)]
    rec = q.record("AAA", "2024-01-02T10:00:00", horizon, window_of([10.0, 10.0]), forecast([10.5, 11.0, 11.5]), ref)
    gone = Claim("m@1|x#1", 1, "new", None, None, 10.2)
    beyond = Claim("m@1|x#9", 9, "new", rec, None, 10.2)
    assert q.score([gone, beyond]) == [] and q._cals == {}
    assert q.metrics.scores.labels("m", "1", "9", "new")._value.get() == 0
    [ok] = q.score([Claim("m@1|x#1", 1, "new", rec, None, 10.2)])
    assert ok["step"] == 1 and ok["abs_error"] == pytest.approx(0.3)


def test_calibration_pools_follow_the_session_map_rules():
    q = quality(_NoScripts(), "p", groups="*.SH=cn, *.SZ=cn, AAPL=us")
    assert [q.group_of(s) for s in ("600000.SH", "000001.SZ", "AAPL", "MSFT")] == ["cn", "cn", "us", "all"]
    assert quality(_NoScripts(), "p").group_of("X") == "all"              # the default: one pool
    assert quality(_NoScripts(), "p", groups="mine").group_of("X") == "mine"  # bare NAME = *=NAME
    assert q.calibrator("MSFT") == ("pool:all", None)
    # An entry with no pattern would match nothing: refused (the CLI says so before start-up).
    with pytest.raises(ValueError, match="empty symbol pattern in calibration group entry '=ignored'"):
        quality(_NoScripts(), "p", groups="*.SH=cn, =ignored")


async def _leftovers(client, keys: RedisKeys, symbol: str) -> dict:
    """What the stored-forecast keys of a symbol hold for forecasts no longer stored."""
    fc, fcidx, due, scored = keys.forecasts(symbol)
    ids = {m.decode() for m in await client.zrange(fcidx, 0, -1)}
    records = {f.decode() for f in await client.hkeys(fc)}
    steps = {m.decode() for m in await client.zrange(due, 0, -1)}
    marks = {f.decode() for f in await client.hkeys(scored)}
    of = lambda members: {m for m in members if m.rpartition("#")[0] not in ids}  # noqa: E731
    return {"records": records ^ ids, "due": of(steps), "marks": of(marks), "stored": len(ids)}


async def _store(q, as_of, win=None):
    horizon = [as_of + STEP * k for k in range(1, q.pred_len + 1)]
    rec = q.record("AAA", as_of.isoformat(), horizon, window_of([10.0, 10.0]),
                   SimpleNamespace(mean=np.full((q.pred_len, 6), 10.5), quantiles={}, paths=None),
                   SimpleNamespace(name="m", version="1"))
    [claims] = await q.store([(rec, horizon, win)])
    return horizon, claims


NOTHING_LEFT = {"records": set(), "due": set(), "marks": set(), "stored": 22}


async def test_forecasts_pushed_out_take_every_step_and_mark_along_even_of_a_longer_horizon(client, redis_prefix):
    keys = RedisKeys(redis_prefix)
    # A deployment with a longer horizon stores forecasts whose every step gets scored ...
    long = quality(client, redis_prefix, pred_len=5)
    for i in range(3):
        horizon, _ = await _store(long, T0 + STEP * i)
        for k, t in enumerate(horizon):
            await claim(long, "AAA", t, 10.0 + k, 10 * i + k)
    # ... then one with P=3 pushes them out (it keeps the newest 2 * 3 + 16), each step scored as it goes.
    q = quality(client, redis_prefix)
    assert q.keep == 22
    for i in range(3, 3 + 30):
        horizon, _ = await _store(q, T0 + STEP * i)
        await claim(q, "AAA", horizon[0], 11.0, 1000 + i)
    assert await _leftovers(client, keys, "AAA") == NOTHING_LEFT


async def test_a_forecast_pushed_out_at_once_is_neither_marked_nor_claimed(client, redis_prefix):
    keys = RedisKeys(redis_prefix)
    q = quality(client, redis_prefix)
    for i in range(10, 10 + 30):
        horizon, _ = await _store(q, T0 + STEP * i)
        await claim(q, "AAA", horizon[0], 11.0, 1000 + i)
    assert await _leftovers(client, keys, "AAA") == NOTHING_LEFT
    # Older than all those it would join (a redelivery after a long outage), its steps already in the
    # window: pushed out at once, so nothing is marked, claimed or left behind.
    late = T0 + STEP * 5
    times = np.array([late + STEP, late + 2 * STEP], dtype="datetime64[s]")
    win = SimpleNamespace(times=times, values=window_of([10.1, 10.2]), offsets=np.array([7, 8]))
    _, claims = await _store(q, late, win)
    assert claims == []
    assert await _leftovers(client, keys, "AAA") == NOTHING_LEFT
    # The newest forecasts are untouched: a kept one still claims its steps once per value.
    horizon, _ = await _store(q, T0 + STEP * 60)
    [s] = await claim(q, "AAA", horizon[1], 10.7, 5000)
    assert (s["kind"], s["step"]) == ("new", 2)
    [again] = await claim(q, "AAA", horizon[1], 10.7, 5000)
    assert again["kind"] == "redelivered" and await claim(q, "AAA", horizon[1], 10.7, 5001) == []
    assert await _leftovers(client, keys, "AAA") == NOTHING_LEFT

"""Live scoring end to end (broker + Redis + worker): every forecast step whose bar arrives is
scored once, the figures equal a hand computation from the forecast and the tape, a corrected
bar re-scores, forecasts carry calibrated bands once enough scores stand behind them, and a
worker killed without a goodbye loses no score (its successor re-publishes) and writes none wrong."""
from __future__ import annotations

import asyncio
import json
from collections import Counter

import jsonschema
import pytest
from aiokafka import AIOKafkaProducer

from tests.worker.streams import (
    ROOT, TAPE, consume, forecast_schema, make_settings, names, one_torch_thread, running_worker,
)
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay
from tests.worker.quality.scores import hand_scores

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


def score_schema():
    return json.loads((ROOT / "schemas" / "score.v1.json").read_text())


async def test_scores_match_a_hand_computation_and_a_correction_rescores(broker, redis_url, redis_prefix):
    topics = names("score")
    topics_scores = topics["forecasts_topic"] + ".scores"
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=2, limit=70)
    settings = make_settings(broker, redis_url, redis_prefix, topics, scores_topic=topics_scores,
                             calibration_window=64, calibration_min_scores=8)
    async with running_worker(settings) as worker:
        await replay(rows, broker, topics["bars_topic"])
        fmsgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= 2 * (70 - 31))
        fcs = [json.loads(m.value) for m in fmsgs]
        want = hand_scores(fcs, rows)
        smsgs = await consume(broker, topics_scores, lambda got: len(got) >= len(want))
        # A correction of a bar that is step 1 of a stored forecast: scored again, flagged.
        sym = sorted(rows["symbol"].unique())[0]
        last = rows[rows["symbol"] == sym].iloc[-1]
        bar = {"symbol": sym, "ts": last["time"].strftime("%Y-%m-%dT%H:%M:%S"), "open": float(last["open"]),
               "high": float(last["high"]) + 1.0, "low": float(last["low"]), "close": float(last["close"]) + 0.5}
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        await producer.send_and_wait(topics["bars_topic"], json.dumps(bar).encode(), key=sym.encode())
        await producer.stop()
        smsgs = await consume(broker, topics_scores,
                              lambda got: any(json.loads(m.value)["kind"] == "rescore" for m in got))
        await asyncio.sleep(0.3)

    scores = [json.loads(m.value) for m in smsgs]
    new = [s for s in scores if s["kind"] == "new"]
    assert Counter((s["symbol"], s["as_of"], s["step"]) for s in new) == Counter(want.keys())
    for s in new:
        exp = want[(s["symbol"], s["as_of"], s["step"])]
        for k in ("abs_error", "persistence_abs_error", "drift_abs_error"):
            assert s[k] == pytest.approx(exp[k], rel=1e-6, abs=1e-9), (k, s)
        assert s["direction_hit"] == exp["direction_hit"]
    assert all(m.key.decode() == s["symbol"] for m, s in zip(smsgs, scores))
    jsonschema.validate(scores[0], score_schema())
    # Every step that bar realized (step 1 of one forecast, step 2 of the one before, ...)
    # is scored again against the latest close, and says what it replaced.
    fixes = [s for s in scores if s["kind"] == "rescore"]
    assert sorted((s["as_of"], s["step"]) for s in fixes) == sorted(
        (s["as_of"], s["step"]) for s in new if s["symbol"] == sym and s["ts"] == bar["ts"])
    for fix in fixes:
        assert fix["realized_close"] == pytest.approx(bar["close"])
        assert fix["previous_close"] == pytest.approx(float(last["close"]))
    # Later forecasts carry calibrated bands (sample_count 1: around the mean path).
    calibrated = [f for f in fcs if any("calibrated_quantiles" in h for h in f["horizon"])]
    assert calibrated
    f = calibrated[-1]
    jsonschema.validate(f, forecast_schema())
    assert f["calibration"]["scores"] >= 8 and f["quantile_levels"] == [0.1, 0.5, 0.9]
    for h in f["horizon"]:
        if "calibrated_quantiles" in h:
            lo, mid, hi = h["calibrated_quantiles"]["close"]
            assert lo <= mid <= hi
    m = worker.metrics.quality
    assert sum(m.scores.labels("model", f["model"]["version"], str(k), "new")._value.get()
               for k in range(1, 5)) == len(want)

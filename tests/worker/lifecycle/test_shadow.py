"""Shadow models without a broker: the flag, skip accounting, and scores that keep apart
from the primary's (a shadow's residuals never move the primary's calibration)."""
from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from worker import config
from worker.config import ModelRef
from worker.adapters.keys import RedisKeys
from worker.quality.live import Claim, Quality, QualityMetrics
from worker.quality.scoring import ForecastRecord
from worker.lifecycle.shadow import ShadowModel, Shadows, parse_shadows, shadow_topic


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    config.configure(parser)
    if environ is not None:
        config.apply_env(parser, environ)
    return config.from_args(parser.parse_args(argv))


def test_shadow_flag_repeats_and_the_command_line_wins_over_the_environment(monkeypatch):
    assert parse(["--shadow", "m@0.2.0", "--shadow", "m@0.3.0"]).shadow == "m@0.2.0,m@0.3.0"
    monkeypatch.setenv("KRONOS_RT_SHADOW", "m@0.4.0, m@0.5.0")
    assert parse_shadows(parse([]).shadow) == ["m@0.4.0", "m@0.5.0"]
    assert parse(["--shadow", "m@0.2.0"]).shadow == "m@0.2.0"
    assert parse_shadows("a@1, a@1,,b@2") == ["a@1", "b@2"]
    assert shadow_topic("fc.5m") == "fc.5m.shadow"


class _NoRedis:
    def register_script(self, _):
        return None


def _record(shadow: bool, version: str) -> ForecastRecord:
    return ForecastRecord(symbol="S", as_of="2024-01-02T09:30:00", model_name="m", model_version=version,
                          last_close=10.0, drift=0.0, scale=0.1, horizon_ts=["2024-01-02T09:35:00"],
                          mean_close=[10.5], levels=[0.1, 0.5, 0.9], raw_q=[[10.0, 10.5, 11.0]], shadow=shadow)


def test_shadow_scores_are_flagged_and_never_feed_the_calibration():
    metrics = QualityMetrics(CollectorRegistry())
    q = Quality(_NoRedis(), RedisKeys("p"), pred_len=1, levels=(0.1, 0.5, 0.9), metrics=metrics)
    shadow = q.score([Claim("m@0.2.0|x#1", 1, "new", _record(True, "0.2.0"), None, 10.2)])
    assert shadow[0]["shadow"] is True and shadow[0]["model"] == {"name": "m", "version": "0.2.0"}
    assert shadow[0]["abs_error"] == abs(10.5 - 10.2)
    assert q._cals == {}  # nothing calibrated from the shadow
    primary = q.score([Claim("m@0.1.0|x#1", 1, "new", _record(False, "0.1.0"), None, 10.2)])
    assert "shadow" not in primary[0]
    assert q._cals[("all", False)].scores() >= 0 and q._cals[("all", False)].dirty
    # Metrics are per version: the two never add up in one series.
    for version in ("0.1.0", "0.2.0"):
        assert metrics.scores.labels("m", version, "1", "new")._value.get() == 1
        got = metrics.abs_error.labels("m", version, "1", "model")._value.get()
        assert math.isclose(got, 0.3, rel_tol=1e-9)


def _shadows(queued: int, max_queue: int) -> Shadows:
    batcher = SimpleNamespace(queued=queued)
    models = [ShadowModel(ModelRef("x", "m", v), SimpleNamespace(keep_paths=False)) for v in ("0.2.0", "0.3.0")]
    settings = SimpleNamespace(forecasts_topic="fc", shadow_max_queue=max_queue)
    return Shadows(models, settings, batcher=batcher, primary=SimpleNamespace(keep_paths=True),
                   publisher_of=lambda: None, scoring=None, registry=CollectorRegistry())


def _batch(n: int, failed: int = 0):
    return SimpleNamespace(items=list(range(n + failed)), results=[object()] * n + [None] * failed)


def skipped(sh: Shadows, version: str, reason: str) -> float:
    return sh.metrics.skipped.labels("m", version, reason)._value.get()


async def test_windows_are_skipped_and_counted_per_version_under_backpressure_or_when_behind():
    sh = _shadows(queued=0, max_queue=4)
    sh.offer(_batch(3, failed=1))  # a window the primary failed on is not the shadows' to run
    assert sh.pending == 3
    sh.offer(_batch(2))  # 3 + 2 > 4 waiting: behind
    assert sh.pending == 3 and skipped(sh, "0.2.0", "behind") == skipped(sh, "0.3.0", "behind") == 2
    sh.batcher.queued = 5  # the primary's own queue is over the bound: backpressure
    sh.offer(_batch(1))
    assert skipped(sh, "0.2.0", "backpressure") == skipped(sh, "0.3.0", "backpressure") == 1
    assert sh.pending == 3
    assert all(m.inference.keep_paths for m in sh.models)  # CRPS from paths, as the primary


# ------------------------------------------------ shadow sends: the primary's Publisher path
import asyncio  # noqa: E402
import datetime as _dt  # noqa: E402

import numpy as np  # noqa: E402

from tests.worker.producers import ScriptedProducer, SizeLimitedProducer, until  # noqa: E402
from worker.contracts import events  # noqa: E402
from worker.pipeline.batcher import Batch  # noqa: E402
from worker.pipeline.ingest import Ready  # noqa: E402
from worker.ops.metrics import WorkerMetrics  # noqa: E402
from worker.pipeline.partition import PartitionState  # noqa: E402
from worker.pipeline.publish import Backoff, ForecastDoc, Publisher  # noqa: E402

_SETTINGS = SimpleNamespace(interval_td=_dt.timedelta(minutes=5), worker_id="w1", temperature=1.0, top_k=0,
                            top_p=0.9, sample_count=1, lookback=4, pred_len=2)


def _ready(st: PartitionState, offset: int, symbol: str) -> Ready:
    t = _dt.datetime(2024, 1, 2, 9, 35)
    bar = events.Bar(symbol, t.isoformat(), t, 10.0, 10.5, 9.5, 10.0, 100.0, None)
    return Ready(bar, st, offset, symbol.encode(), b"{}", kafka_ts=1000.0, received=1000.25,
                 values=np.full((4, 6), 10.0), times=np.array([t] * 4, dtype="datetime64[s]"),
                 horizon=[t + _dt.timedelta(minutes=5 * k) for k in (1, 2)])


def _fc():
    return SimpleNamespace(mean=np.full((2, 6), 10.1), quantiles={0.1: np.full((2, 6), 9.9), 0.9: np.full((2, 6), 10.3)},
                           paths=None)


def _publisher(producer) -> Publisher:
    return Publisher(producer, metrics=WorkerMetrics(), forecast_doc=ForecastDoc(_SETTINGS),
                     backoff=Backoff(0.001, 0.004), closed=lambda p: p.closed)


def _shadows_on(pub: Publisher) -> Shadows:
    models = [ShadowModel(ModelRef("x", "m", "0.2.0"), SimpleNamespace(keep_paths=False))]
    settings = SimpleNamespace(forecasts_topic="fc", shadow_max_queue=8)
    return Shadows(models, settings, batcher=SimpleNamespace(queued=0), primary=SimpleNamespace(keep_paths=False),
                   publisher_of=lambda: pub, scoring=None, registry=CollectorRegistry())


async def test_shadow_forecasts_go_through_the_primarys_publisher_and_gate_no_commit():
    producer = ScriptedProducer(failures=1)  # the first send is retried, as the primary's are
    pub = _publisher(producer)
    sh = _shadows_on(pub)
    st = PartitionState(SimpleNamespace(topic="bars", partition=3))
    items = [_ready(st, 40, "AAA"), _ready(st, 41, "BBB")]
    for it in items:
        st.offsets.add(it.offset)  # the primary's own work for these bars, still pending
    shadow_ref = ModelRef("x", "m", "0.2.0")
    await sh._publish(sh.models[0], items, [(_fc(), shadow_ref)] * 2, handed=100.0, started=100.5, finished=100.75)
    acked = sh.metrics.forecasts.labels("m", "0.2.0")
    await until(lambda: acked._value.get() == 2)
    assert sorted((s[0], s[1]) for s in producer.sent) == [("fc.shadow", b"AAA")] * 2 + [("fc.shadow", b"BBB")]
    assert producer.sent[0][2] == next(s[2] for s in producer.sent[1:] if s[1] == b"AAA")  # the same message again
    docs = [events.loads(next(s[2] for s in producer.sent if s[1] == k)) for k in (b"AAA", b"BBB")]
    # Gates no commit: the shadow's acks leave the primary's pending work for these bars alone.
    assert st.offsets.committable() == 40 and st.offsets.outstanding() == 2
    # The primary's path for the very same items: one ForecastDoc, one send; the shadow's differ in its
    # flag, its model and its latency figures only.
    primary = ScriptedProducer(failures=0)
    ppub = _publisher(primary)
    await ppub.forecasts_of("fc", Batch(items, [100.0, 100.0], 100.5, 100.75, [(_fc(), ModelRef("x", "m", "0.1.0"))] * 2))
    await until(lambda: ppub.forecasts == 2)
    for doc, (topic, _, value, _) in zip(docs, primary.sent):
        want = events.loads(value)
        assert topic == "fc" and "shadow" not in want
        assert doc.pop("shadow") is True and doc["batch_size"] == want["batch_size"] == 2
        assert doc.pop("model") == {"name": "m", "version": "0.2.0"} and want.pop("model")["version"] == "0.1.0"
        lat, want_lat = doc.pop("latency_ms"), want.pop("latency_ms")
        assert lat["queue_wait"] == want_lat["queue_wait"] == 500.0 and lat["inference"] == 250.0
        assert lat["broker_to_received"] == 250.0 and lat["total"] > 0
        doc.pop("produced_at", None), want.pop("produced_at", None)
        assert doc == want
    assert st.offsets.committable() == 42 and st.offsets.outstanding() == 0  # the primary's acks did
    # The shadow fed none of the primary's figures.
    assert pub.forecasts == 0 and pub.metrics.forecasts._value.get() == 0
    assert pub.metrics.e2e_latency._sum.get() == 0 and pub.metrics.batch_size._sum.get() == 0


async def test_a_shadow_send_leaves_the_primarys_pending_offsets_alone_and_never_waits():
    pub = _publisher(ScriptedProducer(failures=0))
    sh = _shadows_on(pub)
    st = PartitionState(SimpleNamespace(topic="bars", partition=0))
    st.offsets.add(7)
    await sh._publish(sh.models[0], [_ready(st, 7, "AAA")], [(_fc(), ModelRef("x", "m", "0.2.0"))],
                      handed=10.0, started=9.0, finished=9.5)  # handed after it started: no negative wait
    await until(lambda: sh.metrics.forecasts.labels("m", "0.2.0")._value.get() == 1)
    assert st.offsets.outstanding() == 1 and st.offsets.committable() == 7
    doc = events.loads(pub.producer.sent[0][2])
    assert doc["latency_ms"]["queue_wait"] == 0.0 and doc["shadow"] is True


async def test_a_shadow_forecast_the_broker_refuses_is_counted_not_dead_lettered():
    producer = SizeLimitedProducer(limit=100)
    pub = _publisher(producer)
    sh = _shadows_on(pub)
    st = PartitionState(SimpleNamespace(topic="bars", partition=0))
    await sh._publish(sh.models[0], [_ready(st, 5, "AAA")], [(_fc(), ModelRef("x", "m", "0.2.0"))],
                      handed=1.0, started=1.0, finished=1.5)
    errors = sh.metrics.errors.labels("m", "0.2.0")
    await until(lambda: errors._value.get() == 1)
    await asyncio.sleep(0.01)
    assert producer.refused == 1 and producer.sent == []  # no DLQ copy of the primary's bar
    assert pub.dead_letters == 0 and st.offsets.committable() is None  # no work added for the bar, none done
    assert sh.metrics.forecasts.labels("m", "0.2.0")._value.get() == 0

"""Shadow models without a broker: the flag, skip accounting, and scores that keep apart
from the primary's (a shadow's residuals never move the primary's calibration)."""
from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from worker import config
from worker.config import ModelRef
from worker.keys import RedisKeys
from worker.quality import Claim, Quality, QualityMetrics
from worker.scoring import ForecastRecord
from worker.shadow import ShadowModel, Shadows, parse_shadows, shadow_topic


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
                   publisher_of=lambda: None, forecast_doc=None, scoring=None, registry=CollectorRegistry())


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

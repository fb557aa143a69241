"""Replay report: exact numbers on hand-made data, files written, and one run through the broker."""
from __future__ import annotations

import asyncio
import datetime as dt
import math

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import unique_topic
from worker.cli import main as cli_main
from worker.tools.report import _chart_picks, build_report
from worker.adapters.kafka import ensure_topics

T0 = dt.datetime(2024, 6, 18, 9, 0)
P0 = dt.datetime(2024, 6, 18, 1, 0, tzinfo=dt.timezone.utc)
CLOSES = [10, 11, 12, 13, 12, 15, 15]  # bars at T0 + 5 min * i


def ts(i: int) -> str:
    return (T0 + dt.timedelta(minutes=5 * i)).strftime("%Y-%m-%dT%H:%M:%S")


def bar(i: int, close: float, symbol: str = "S") -> dict:
    return {"schema": "bar.v1", "symbol": symbol, "ts": ts(i), "open": close, "high": close, "low": close,
            "close": close, "volume": 1.0, "amount": close}


def fc(as_of: int, steps: list[tuple[int, float, list[float] | None]], total_ms: float, produced_s: float,
       symbol: str = "S", **extra) -> dict:
    """steps: (bar index of the step's ts, predicted close, close quantiles at levels 0.1/0.5/0.9 or None)."""
    horizon = []
    for i, close, q in steps:
        entry = {"ts": ts(i), "open": close, "high": close, "low": close, "close": close,
                 "volume": 1.0, "amount": close}
        if q is not None:
            entry["quantiles"] = {"close": q}
        horizon.append(entry)
    return {
        "schema": "forecast.v1", "symbol": symbol, "as_of": ts(as_of), "interval_s": 300, "horizon": horizon,
        "quantile_levels": [0.1, 0.5, 0.9] if any(q for _, _, q in steps) else [],
        "model": {"name": "kronos-small", "version": "1.0.0"},
        "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 8, "lookback": 64,
                     "pred_len": len(steps)},
        "latency_ms": {"broker_to_received": 1.0, "queue_wait": 2.0, "inference": total_ms / 2, "total": total_ms},
        "source": {"topic": "bars", "partition": 0, "offset": as_of}, "worker_id": "w1",
        "produced_at": (P0 + dt.timedelta(seconds=produced_s)).isoformat(timespec="milliseconds"),
        **extra,
    }


def dataset(**extra):
    bars = [bar(i, c) for i, c in enumerate(CLOSES)]
    f1 = fc(3, [(4, 12.5, [12.2, 12.5, 13.0]), (5, 14.0, [13.0, 14.0, 15.0]), (7, 16.0, [15.0, 16.0, 17.0])],
            10, 0.0, **extra)
    f2 = fc(4, [(5, 11.0, [10.0, 11.0, 14.0]), (6, 13.0, [12.0, 13.0, 16.0])], 20, 0.5, **extra)
    f3 = fc(6, [(7, 15.0, None), (8, 15.0, None)], 30, 1.2, **extra)       # no realized bars yet
    f4 = fc(10, [(11, 15.0, None)], 40, 2.9, **extra)                      # as_of bar unknown
    f6 = fc(5, [(6, 16.0, None), (7, 16.0, None)], 100, 3.0, **extra)     # realized bar flat
    invalid = {"schema": "forecast.v1", "symbol": "S"}
    return [f1, f2, f1, f3, invalid, f4, f6], bars


def test_exact_numbers(tmp_path):
    forecasts, bars = dataset()
    s = build_report(forecasts, bars, tmp_path / "out", lookback=3)

    assert (s.n_forecasts, s.n_duplicates, s.n_invalid, s.n_bars) == (5, 1, 1, 7)
    assert s.symbols == ["S"] and s.models == ["kronos-small@1.0.0"]
    assert (s.matched_steps, s.unmatched_steps, s.no_as_of_bar) == (5, 4, 1)

    # Totals 10, 20, 30, 40, 100 (the duplicate counted once); numpy's linear percentiles.
    assert s.latency["total"] == {"count": 5, "p50": 30.0, "p90": pytest.approx(76.0), "p99": pytest.approx(97.6),
                                  "max": 100.0}
    assert list(s.latency) == ["broker_to_received", "queue_wait", "inference", "total"]
    assert s.throughput == {"span_s": 3.0, "mean_per_s": pytest.approx(5 / 3), "peak_per_s": 2.0, "bucket_s": 1.0}
    assert s.batch_sizes is None

    step1, step2 = s.accuracy
    # Step 1: (model, last, drift) errors  F1: (0.5, 1, 2)  F2: (-4, -3, -3)  F6: (1, 0, 1);
    # drift over lookback 3: F1 (13-11)/2 = 1, F2 (12-12)/2 = 0, F6 (15-13)/2 = 1.
    assert step1.n == 3
    assert step1.mae == pytest.approx(5.5 / 3) and step1.rmse == pytest.approx(math.sqrt(17.25 / 3))
    assert step1.last_mae == pytest.approx(4 / 3) and step1.last_rmse == pytest.approx(math.sqrt(10 / 3))
    assert step1.drift_mae == pytest.approx(2.0) and step1.drift_rmse == pytest.approx(math.sqrt(14 / 3))
    # F6's realized bar did not move: only F1 (hit) and F2 (miss) count; drift misses both.
    assert (step1.n_moves, step1.hit_rate, step1.drift_hit_rate) == (2, 0.5, 0.0)
    # Step 2: F1: (-1, -2, 0)  F2: (-2, -3, -3).
    assert step2.n == 2
    assert step2.mae == pytest.approx(1.5) and step2.rmse == pytest.approx(math.sqrt(2.5))
    assert step2.last_mae == pytest.approx(2.5) and step2.last_rmse == pytest.approx(math.sqrt(6.5))
    assert step2.drift_mae == pytest.approx(1.5) and step2.drift_rmse == pytest.approx(math.sqrt(4.5))
    assert (step2.hit_rate, step2.drift_hit_rate) == (1.0, 0.5)
    o = s.overall
    assert o.n == 5 and o.mae == pytest.approx(1.7) and o.rmse == pytest.approx(math.sqrt(4.45))
    assert o.hit_rate == 0.75 and o.drift_hit_rate == 0.25
    assert o.last_mae == pytest.approx(1.8) and o.drift_mae == pytest.approx(1.8)

    # Band [q0.1, q0.9]: F1 step 1 (12 < 12.2) out, step 2 (15 == upper edge) in; F2 step 1 out, step 2 in.
    (cov,) = s.coverage
    assert (cov.lo, cov.hi, cov.n, cov.covered) == (0.1, 0.9, 4, 2)
    assert cov.rate == 0.5 and cov.nominal == pytest.approx(0.8)
    assert cov.per_step == {1: (2, 0), 2: (2, 2)}

    names = sorted(p.name for p in s.files)
    assert names == ["accuracy.png", "forecasts.png", "latency_hist.png", "report.md", "throughput.png"]
    for p in s.files:
        assert p.is_file() and p.stat().st_size > 0
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in s.files if p.suffix == ".png")
    md = s.report_path.read_text()
    assert "| total | 5 | 30.0 | 76.0 | 97.6 | 100.0 |" in md
    assert "Skipped: these forecasts carry no `batch_size` field" in md
    assert "| 1 | 3 | 1.833 | 2.398 | 50.0% | 1.333 | 1.826 | 2 | 2.16 | 0.0% |" in md
    assert "Band [q0.1, q0.9], nominal 80.0%: 50.0% of 4 realized closes inside." in md
    assert "![MAE per horizon step](accuracy.png)" in md


def test_batch_sizes_when_present(tmp_path):
    forecasts, bars = dataset()
    for f, size in zip(forecasts, [4, 4, 4, 2, 0, 2, 1]):
        if "horizon" in f:
            f["batch_size"] = size
    s = build_report(forecasts, bars, tmp_path, lookback=3)
    # Distinct forecasts: F1 (4; its duplicate is not counted again), F2 (4), F3 (2), F4 (2), F6 (1).
    assert s.batch_sizes == {"count": 5, "mean": 2.6, "p50": 2.0, "max": 4.0}
    assert (tmp_path / "batch_sizes.png").is_file()
    assert "mean batch size 2.60, median 2, max 4" in (tmp_path / "report.md").read_text()


def test_empty_inputs_still_write_a_report(tmp_path):
    s = build_report([], [], tmp_path)
    assert s.n_forecasts == 0 and s.accuracy == [] and s.overall is None and s.coverage == []
    md = (tmp_path / "report.md").read_text()
    assert "No forecasts." in md and "No forecast step could be matched" in md
    assert "Skipped: no forecast has its whole horizon among the bars yet." in md
    with pytest.raises(ValueError, match="lookback"):
        build_report([], [], tmp_path, lookback=1)


def test_report_command_reads_the_topics(broker, tmp_path, capsys):
    forecasts, bars = dataset()
    ftopic, btopic = unique_topic("forecasts"), unique_topic("bars")

    async def publish():
        await ensure_topics(broker, {ftopic: 3, btopic: 2})
        producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            for b in bars:
                await producer.send_and_wait(btopic, orjson.dumps(b), key=b["symbol"].encode())
            for f in forecasts:
                await producer.send_and_wait(ftopic, orjson.dumps(f), key=b"S")
            await producer.send_and_wait(ftopic, b"not json", key=b"S")
        finally:
            await producer.stop()

    asyncio.run(publish())
    out = tmp_path / "rep"
    rc = cli_main(["report", "--brokers", broker, "--forecasts-topic", ftopic, "--bars-topic", btopic,
                   "--out", str(out), "--lookback", "3", "--timeout", "30"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "5 forecasts, 7 bars" in printed and "close MAE 1.7 (last 1.8, drift 1.8)" in printed
    md = (out / "report.md").read_text()
    assert f"forecasts topic: {ftopic}" in md and "undecodable messages: 1" in md
    # Same numbers as the pure function on the same data.
    assert "| all | 5 | 1.7 |" in md
    assert (out / "latency_hist.png").is_file() and (out / "accuracy.png").is_file()

    rc = cli_main(["report", "--brokers", broker, "--forecasts-topic", unique_topic("missing"),
                   "--bars-topic", btopic, "--out", str(tmp_path / "x"), "--timeout", "10"])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_calibrated_coverage_per_step_beside_raw(tmp_path):
    forecasts, bars = dataset()
    f1, f2 = forecasts[0], forecasts[1]
    # Calibrated bands: F1 step 1 [11.5, 12.8] holds 12, step 2 [14, 14.5] misses 15;
    # F2 step 1 [14, 16] holds 15, step 2 [15.5, 17] misses 15.
    f1["horizon"][0]["calibrated_quantiles"] = {"close": [11.5, 12.5, 12.8]}
    f1["horizon"][1]["calibrated_quantiles"] = {"close": [14.0, 14.2, 14.5]}
    f2["horizon"][0]["calibrated_quantiles"] = {"close": [14.0, 15.0, 16.0]}
    f2["horizon"][1]["calibrated_quantiles"] = {"close": [15.5, 16.0, 17.0]}
    s = build_report([f1, f2], bars, tmp_path / "out", lookback=3)

    raw, cal = s.coverage
    assert (raw.kind, raw.per_step) == ("raw", {1: (2, 0), 2: (2, 2)})  # as without calibration
    assert (cal.kind, cal.lo, cal.hi, cal.n, cal.covered) == ("calibrated", 0.1, 0.9, 4, 2)
    assert cal.per_step == {1: (2, 2), 2: (2, 0)}
    assert "coverage.png" in [p.name for p in s.files]
    assert (tmp_path / "out" / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = s.report_path.read_text()
    assert "Calibrated band [q0.1, q0.9] (`calibrated_quantiles`), nominal 80.0%: 50.0% of 4" in md
    assert "| 1 | 2 | 0.0% | 2 | 100.0% | 80.0% |" in md
    assert "| 2 | 2 | 100.0% | 2 | 0.0% | 80.0% |" in md
    assert "![Band coverage per horizon step](coverage.png)" in md


def test_forecast_charts_show_fully_realized_forecasts(tmp_path):
    forecasts, bars = dataset()
    # Only F2 (as_of bar 4, steps at bars 5 and 6) has its whole horizon among the bars.
    assert _chart_picks(forecasts, bars) == [("S", [forecasts[1]])]
    s = build_report(forecasts, bars, tmp_path, lookback=3)
    assert (tmp_path / "forecasts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = s.report_path.read_text()
    assert "## Forecasts against realized closes" in md and "![forecasts against realized closes](forecasts.png)" in md


def test_forecast_charts_pick_a_few_symbols_and_times_spread_over_the_replay(tmp_path):
    bars, forecasts = [], []
    for n, sym in enumerate(["A", "B", "C", "D"]):
        closes = [10 + n + 0.1 * i for i in range(30)]
        bars += [bar(i, c, symbol=sym) for i, c in enumerate(closes)]
        last = 28 - n  # A has the most fully realized forecasts, D the fewest
        for a in range(5, 30):
            mean = [closes[a] + 0.3 * k for k in (1, 2)]  # above the realized closes (0.1 a bar)
            steps = [(a + k, m, [m - 0.2 * k, m, m + 0.2 * k]) for k, m in zip((1, 2), mean)]
            f = fc(a, steps, 10, a, symbol=sym)
            if a + 2 <= last:
                for k, h in enumerate(f["horizon"], start=1):
                    h["calibrated_quantiles"] = {"close": [h["close"] - 0.3 * k, h["close"], h["close"] + 0.3 * k]}
            forecasts.append(f)
    # D's bars stop early: fewer of its forecasts are fully realized.
    bars = [b for b in bars if not (b["symbol"] == "D" and b["ts"] > ts(20))]
    picks = _chart_picks(forecasts, bars)
    assert [sym for sym, _ in picks] == ["A", "B", "C"]  # the three with the most realized forecasts
    for sym, fcs in picks:
        as_ofs = [f["as_of"] for f in fcs]
        # 23 realized forecasts (as_of 5..27): three spread over them, not the first
        assert as_ofs == [ts(12), ts(20), ts(27)]
    s = build_report(forecasts, bars, tmp_path, lookback=3)
    assert "forecasts.png" in [p.name for p in s.files]
    from PIL import Image

    with Image.open(tmp_path / "forecasts.png") as img:
        w, h = img.size
        assert w > h  # 3 x 3 panels, wider than tall
        r, g, b = np.asarray(img.convert("RGB")).astype(int).transpose(2, 0, 1)
    blue = int(((b > 180) & (r < 60) & (g < 110)).sum())                   # mean paths
    orange = int(((r > 200) & (g > 100) & (g < 150) & (b < 60)).sum())     # calibrated bands
    fill = int(((b > 225) & (b - r > 15) & (r > 150)).sum())               # raw band fill
    assert blue > 200 and orange > 100 and fill > 200

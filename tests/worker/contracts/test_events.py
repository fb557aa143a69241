"""worker/contracts/events.py: bar parsing (checked against schemas/bar.v1.json too) and forecast building."""
import json
import math
from datetime import datetime
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from worker.contracts.events import Bar, InvalidEvent, build_forecast, dumps, loads, parse_bar

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


def _validator(name):
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


BAR_SCHEMA = _validator("bar.v1.json")
FORECAST_SCHEMA = _validator("forecast.v1.json")

BASE = {"symbol": "600000.SH", "ts": "2024-06-18 11:15:00", "open": 11.27, "high": 11.28,
        "low": 11.26, "close": 11.27, "volume": 379.0, "amount": 427161.0}


def bar(**changes):
    d = dict(BASE)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


_DROP = object()

GOOD = [
    bar(),
    bar(ts="2024-06-18T11:15:00"),
    bar(ts="2024-06-18T11:15:00+08:00"),
    bar(ts="2024-06-18T11:15:00Z"),
    bar(ts="2024-06-18T11:15:00.000-05:00"),  # a zero fraction is whole seconds
    bar(open=1e15, high=1e15, low=1e15, close=1e15, volume=1e15, amount=1e15),  # MAX_MAGNITUDE itself
    bar(open=1e-8, high=1e-8, low=1e-8, close=1e-8),  # tiny but positive
    bar(volume=None, amount=None),
    bar(volume=_DROP, amount=_DROP),
    bar(volume=0, amount=0),
    bar(open=11, high=12, low=10, close=11),  # ints are numbers
    bar(symbol="AAPL"), bar(symbol="BTC-USD:spot_1"), bar(symbol="x" * 64),
    bar(extra={"note": "kept"}, source="feed-a"),
    bar(open=5.0, high=5.0, low=5.0, close=5.0),
]

# (document, reason, does the JSON Schema also reject it?)
BAD = [
    (bar(symbol=_DROP), "schema", True),
    (bar(ts=_DROP), "schema", True),
    (bar(close=_DROP), "schema", True),
    (bar(open="11.27"), "schema", True),
    (bar(high=True), "schema", True),
    (bar(volume="3"), "schema", True),
    ([BASE], "schema", True),
    ("just a string", "schema", True),
    (bar(symbol=""), "bad_symbol", True),
    (bar(symbol="x" * 65), "bad_symbol", True),
    (bar(symbol="600000 SH"), "bad_symbol", True),
    (bar(symbol="a/b"), "bad_symbol", True),
    (bar(symbol="{tag}"), "bad_symbol", True),
    (bar(symbol=600000), "bad_symbol", True),
    (bar(ts="18/06/2024 11:15"), "bad_ts", True),
    (bar(ts="2024-06-18"), "bad_ts", True),
    (bar(ts=1718709300), "bad_ts", True),
    (bar(ts="2024-06-18T11:15:00 +08:00"), "bad_ts", True),
    (bar(ts="2024-13-18T11:15:00"), "bad_ts", False),  # right shape, impossible date
    (bar(volume=-1), "negative_volume", True),
    (bar(amount=-0.5), "negative_volume", True),
    (bar(open="NaN"), "non_finite", True),
    (bar(amount="-Infinity"), "non_finite", True),
    (bar(high=11.0), "high_low", False),          # high < open/close
    (bar(low=11.5, high=11.6), "high_low", False),  # low > min(open, close)
    (bar(high=11.0, low=12.0), "high_low", False),
    # values that would poison a symbol's window (issue 10, item 5)
    (bar(open=0, low=0), "non_positive_price", True),
    (bar(open=-1.0, high=1.0, low=-1.0, close=1.0), "non_positive_price", True),
    (bar(open=1e300, high=1e300, low=1e300, close=1e300), "out_of_range", True),
    (bar(close=-1e300), "out_of_range", True),
    (bar(volume=1e300), "out_of_range", True),
    (bar(amount=2e15), "out_of_range", True),
    (bar(ts="2024-06-18T11:15:00.250-05:00"), "sub_second", True),
    (bar(ts="2024-06-18 11:15:00.000001"), "sub_second", True),
]


@pytest.mark.parametrize("doc", GOOD)
def test_good_bars_parse_and_match_schema(doc):
    BAR_SCHEMA.validate(doc)
    b = parse_bar(json.dumps(doc).encode(), key=doc["symbol"].encode())
    assert isinstance(b, Bar)
    assert b.symbol == doc["symbol"] and b.ts == doc["ts"]
    assert b.close == float(doc["close"])
    assert b.volume == doc.get("volume") and b.amount == doc.get("amount")


@pytest.mark.parametrize("doc,reason,schema_rejects", BAD)
def test_bad_bars_rejected_with_reason(doc, reason, schema_rejects):
    with pytest.raises(InvalidEvent) as exc:
        parse_bar(json.dumps(doc).encode())
    assert exc.value.reason == reason, exc.value.detail
    assert exc.value.detail
    assert (not BAR_SCHEMA.is_valid(doc)) == schema_rejects


def test_time_is_wall_clock_with_offset_dropped():
    b = parse_bar(dumps(bar(ts="2024-06-18T11:15:00+08:00")))
    assert b.time == datetime(2024, 6, 18, 11, 15) and b.time.tzinfo is None
    assert b.ts == "2024-06-18T11:15:00+08:00"
    assert parse_bar(dumps(bar(ts="2024-06-18 09:35:00"))).time == datetime(2024, 6, 18, 9, 35)


def test_bar_values_use_nan_for_missing_sizes():
    v = parse_bar(dumps(bar(volume=None, amount=_DROP))).values()
    assert v[:4] == (11.27, 11.28, 11.26, 11.27) and math.isnan(v[4]) and math.isnan(v[5])


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_json_literals(raw):
    payload = b'{"symbol":"A","ts":"2024-06-18 11:15:00","open":1,"high":2,"low":1,"close":%s}' % raw
    with pytest.raises(InvalidEvent) as exc:
        parse_bar(payload)
    assert exc.value.reason == "non_finite"


def test_non_finite_literal_in_extra_field():
    payload = dumps(bar())[:-1] + b',"extra":NaN}'
    with pytest.raises(InvalidEvent) as exc:
        parse_bar(payload)
    assert exc.value.reason == "non_finite"


@pytest.mark.parametrize("raw", [b"", None, b"{", b"\xff\xfe", b'{"symbol":"A",}', b"not json"])
def test_bad_json(raw):
    with pytest.raises(InvalidEvent) as exc:
        parse_bar(raw)
    assert exc.value.reason == "bad_json"


def test_oversized_checked_before_parsing():
    payload = dumps(bar(pad="x" * 5000))
    with pytest.raises(InvalidEvent) as exc:
        parse_bar(payload)
    assert exc.value.reason == "oversized"
    assert parse_bar(payload, max_bytes=len(payload)).symbol == "600000.SH"


def test_key_must_match_symbol():
    payload = dumps(bar())
    assert parse_bar(payload, key=b"600000.SH").symbol == "600000.SH"
    assert parse_bar(payload, key=None).symbol == "600000.SH"
    with pytest.raises(InvalidEvent) as exc:
        parse_bar(payload, key=b"600001.SH")
    assert exc.value.reason == "key_mismatch"


def test_dumps_serializes_numpy_and_loads_round_trips():
    doc = {"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(7)}
    assert loads(dumps(doc)) == {"a": 1.5, "b": [0, 1, 2], "c": 7}


def _forecast(quantiles):
    times = [datetime(2024, 6, 18, 13, 5), datetime(2024, 6, 18, 13, 10)]
    mean = np.array([[1, 2, 0.5, 1.5, 100, 1000], [1.5, 2.5, 1, 2, 110, 1100]], dtype=np.float32)
    return build_forecast(
        symbol="600000.SH", as_of="2024-06-18 11:30:00", interval_s=300, horizon_times=times,
        mean=mean, quantiles=quantiles, model_name="kronos-small", model_version="abc123",
        sampling={"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 8, "lookback": 400, "pred_len": 2},
        latency_ms={"broker_to_received": 1.5, "queue_wait": np.float64(2.0), "inference": 30, "total": 35.5},
        topic="bars", partition=np.int64(3), offset=np.int64(1234), worker_id="w-1")


def test_build_forecast_matches_schema_with_quantiles():
    q = {0.9: np.full((2, 6), 9.0), 0.1: np.full((2, 6), 1.0), 0.5: np.full((2, 6), 5.0)}
    doc = _forecast(q)
    FORECAST_SCHEMA.validate(doc)
    FORECAST_SCHEMA.validate(loads(dumps(doc)))
    assert doc["quantile_levels"] == [0.1, 0.5, 0.9]
    assert doc["horizon"][0]["ts"] == "2024-06-18T13:05:00"
    assert doc["horizon"][1]["close"] == 2.0 and type(doc["horizon"][1]["close"]) is float
    assert doc["horizon"][0]["quantiles"]["high"] == [1.0, 5.0, 9.0]
    assert doc["source"] == {"topic": "bars", "partition": 3, "offset": 1234}
    assert type(doc["source"]["offset"]) is int


def test_build_forecast_without_quantiles():
    doc = _forecast({})
    FORECAST_SCHEMA.validate(doc)
    assert doc["quantile_levels"] == [] and "quantiles" not in doc["horizon"][0]
    bad = dict(doc, schema="forecast.v2")
    assert not FORECAST_SCHEMA.is_valid(bad)


def test_format_ts_is_strftime_text_for_every_kind_of_time():
    """format_ts takes isoformat for plain datetimes (faster): the text is strftime's, the
    fallback kept for zoned times, years under 1000 and datetime64."""
    from datetime import timedelta, timezone

    import pandas as pd

    from worker.contracts.events import format_ts

    for t in (datetime(2024, 6, 18, 13, 5), datetime(2024, 6, 18, 13, 5, 7, 999999), datetime(1000, 1, 1),
              datetime(9999, 12, 31, 23, 59, 59), datetime(999, 3, 4, 5, 6, 7),
              datetime(2024, 6, 18, 13, 5, tzinfo=timezone(timedelta(hours=8))), pd.Timestamp("2024-06-18 13:05:00")):
        assert format_ts(t) == t.strftime("%Y-%m-%dT%H:%M:%S")
    assert format_ts(np.datetime64("2024-06-18T13:05:00.5")) == "2024-06-18T13:05:00"


def test_build_forecast_floats_are_the_same_from_float32_float64_and_lists():
    rng = np.random.default_rng(0)
    mean32 = rng.normal(size=(3, 6)).astype(np.float32)
    times = [datetime(2024, 1, 1, 9, 30 + i) for i in range(3)]

    def doc(mean, q):
        return build_forecast(symbol="A", as_of="x", interval_s=60, horizon_times=times, mean=mean, quantiles=q,
                              model_name="m", model_version="v", sampling={}, latency_ms={}, topic="t",
                              partition=0, offset=0, worker_id="w")

    want = doc(mean32.astype(np.float64), {0.5: mean32.astype(np.float64)})
    for mean in (mean32, mean32.tolist(), np.asfortranarray(mean32)):
        got = doc(mean, {0.5: mean32})
        assert [dumps(h) for h in got["horizon"]] == [dumps(h) for h in want["horizon"]]
    ints = doc(np.arange(18).reshape(3, 6), {})  # other dtypes still become floats
    assert type(ints["horizon"][0]["open"]) is float


def test_build_forecast_rejects_wrong_shape():
    with pytest.raises(ValueError):
        build_forecast(symbol="A", as_of="x", interval_s=60, horizon_times=[datetime(2024, 1, 1)],
                       mean=np.zeros((2, 6)), quantiles={}, model_name="m", model_version="v",
                       sampling={}, latency_ms={}, topic="t", partition=0, offset=0, worker_id="w")


def test_deeply_nested_arrays_are_bad_json_not_a_crash():
    # 3.9 kB of nesting: deeper than orjson's limit and than the stdlib decoder's recursion.
    for payload in (b"[" * 3900, b"[" * 1950 + b"]" * 1950):
        with pytest.raises(InvalidEvent) as exc:
            parse_bar(payload)
        assert exc.value.reason == "bad_json"


# --------------------------------------------------------------------- BarPolicy
from datetime import timedelta  # noqa: E402

from worker.contracts.events import BarPolicy  # noqa: E402
from worker.calendars.sessions import parse_session_map  # noqa: E402

def utc_ms(*args) -> int:
    return int((datetime(*args) - datetime(1970, 1, 1)).total_seconds() * 1000)


def policy_reason(doc, ts_ms, **kw):
    kw.setdefault("interval", timedelta(minutes=5))
    try:
        parse_bar(dumps(doc), policy=BarPolicy(**kw), timestamp_ms=ts_ms)
    except InvalidEvent as e:
        assert e.detail
        return e.reason
    return None


def test_policy_grid():
    now = utc_ms(2024, 6, 18, 12, 0)
    assert policy_reason(bar(ts="2024-06-18 11:15:00"), now) is None
    assert policy_reason(bar(ts="2024-06-18 11:16:00"), now) == "off_grid"
    assert policy_reason(bar(ts="2024-06-18 11:15:30"), now) == "off_grid"
    # 1h bars of a session opening at 09:30 end at hh:30; a continuous feed's at hh:00.
    hourly = dict(interval=timedelta(hours=1))
    assert policy_reason(bar(ts="2024-06-18 10:30:00"), now, **hourly) == "off_grid"
    assert policy_reason(bar(ts="2024-06-18 10:30:00"), now, calendar_for=parse_session_map("ashare"),
                         **hourly) is None
    assert policy_reason(bar(ts="2024-06-18 14:00:00"), now, calendar_for=parse_session_map("ashare"),
                         **hourly) is None
    assert policy_reason(bar(ts="2024-06-18 10:45:00"), now, calendar_for=parse_session_map("ashare"),
                         **hourly) == "off_grid"
    # Intervals that do not divide a day count from the epoch; daily bars are not checked.
    assert policy_reason(bar(ts="1970-01-01T00:07:00"), now, interval=timedelta(minutes=7)) is None
    assert policy_reason(bar(ts="2024-06-18 15:00:00"), now, interval=timedelta(days=1)) is None


def test_policy_future_skew_and_past_age():
    at = utc_ms(2024, 6, 18, 11, 20)
    assert policy_reason(bar(ts="2099-06-18 11:15:00"), at) == "future_ts"
    assert policy_reason(bar(ts="9999-12-31 23:55:00"), at) == "future_ts"
    assert policy_reason(bar(ts="9999-12-31T23:55:00-05:00"), at) == "future_ts"  # no UTC datetime
    # A wall-clock ts without offset compares as UTC: +08:00 local time passes the 1-day default ...
    assert policy_reason(bar(ts="2024-06-18 19:15:00"), at) is None
    # ... and with an offset the comparison is exact.
    assert policy_reason(bar(ts="2024-06-18T19:15:00+08:00"), at, max_future_skew=timedelta(minutes=1)) is None
    assert policy_reason(bar(ts="2024-06-18T19:25:00+08:00"), at, max_future_skew=timedelta(minutes=1)) == "future_ts"
    # Old bars pass unless --max-past-age is set.
    assert policy_reason(bar(ts="2001-06-18 11:15:00"), at) is None
    assert policy_reason(bar(ts="2001-06-18 11:15:00"), at, max_past_age=timedelta(days=30)) == "stale_ts"
    assert policy_reason(bar(ts="2024-06-18 11:15:00"), at, max_past_age=timedelta(days=30)) is None
    # No usable message timestamp: only the grid is checked.
    assert policy_reason(bar(ts="2099-06-18 11:15:00"), None) is None
    assert policy_reason(bar(ts="2099-06-18 11:15:00"), -1) is None


def test_policy_compares_every_offset_form_in_utc():
    at = utc_ms(2024, 6, 18, 11, 20)
    tight = dict(max_future_skew=timedelta(minutes=1), max_past_age=timedelta(minutes=10))
    # 11:15 UTC written in each form the schema allows: on time, all of them.
    for ts in ("2024-06-18T11:15:00Z", "2024-06-18T11:15:00+00:00", "2024-06-18T19:15:00+0800",
               "2024-06-18T06:15:00-05:00", "2024-06-18T06:15:00-0500", "2024-06-18 11:15"):
        assert policy_reason(bar(ts=ts), at, **tight) is None, ts
    # 10 minutes later (too far ahead) and 15 minutes earlier (too old), again in each form.
    for ts in ("2024-06-18T11:25:00Z", "2024-06-18T19:25:00+08:00", "2024-06-18T06:25:00-0500"):
        assert policy_reason(bar(ts=ts), at, **tight) == "future_ts", ts
    for ts in ("2024-06-18T11:00:00Z", "2024-06-18T19:00:00+08:00", "2024-06-18T06:00:00-0500"):
        assert policy_reason(bar(ts=ts), at, **tight) == "stale_ts", ts
    # Both ends of the datetime range: no UTC datetime, refused as out of range, never a crash.
    assert policy_reason(bar(ts="0001-01-01T00:05:00+01:00"), at) == "future_ts"
    assert policy_reason(bar(ts="9999-12-31T23:55:00-05:00"), at) == "future_ts"


def test_forecast_identity_is_symbol_as_of_and_model_version():
    from worker.contracts.events import identity_of

    doc = {"symbol": "AAA", "as_of": "2024-06-18T09:35:00", "model": {"name": "m", "version": "1.0.0"}}
    same = dict(doc, as_of="2024-06-18 09:35")  # the same time written differently
    other = dict(doc, model={"name": "m", "version": "1.0.1"})
    assert identity_of(doc) == identity_of(same)
    assert identity_of(doc) != identity_of(other)


def test_utc_now_ms_says_what_datetime_now_says_to_the_millisecond():
    import datetime as _dt
    import time as _time

    from worker.contracts.events import utc_now_ms

    for _ in range(200):  # across millisecond boundaries: formatted anew each one
        before = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        text = utc_now_ms()
        after = _dt.datetime.now(_dt.timezone.utc)
        got = _dt.datetime.fromisoformat(text)
        assert text == got.isoformat(timespec="milliseconds") and text.endswith("+00:00")
        assert before <= got <= after
        _time.sleep(0.0002)

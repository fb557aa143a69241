"""Wire formats: parse bar.v1 events, build forecast.v1 events (schemas/*.json).

parse_bar runs once per consumed message, so it uses orjson plus hand-written
checks instead of jsonschema. tests/worker/contracts/test_events.py runs one corpus through
both this parser and schemas/bar.v1.json so the two stay in agreement.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
import time
from dataclasses import dataclass

import numpy as np
import orjson

from kronos_rt.features import COLUMNS, PRICE_COLUMNS  # numpy only: no torch import
# The time and identity rules subscribers share (kronos_rt_client reads forecasts by them too).
from kronos_rt_client.wire import InvalidEvent, forecast_identity, identity_of, parse_time, parse_ts  # noqa: F401

SIZE_FIELDS = ("volume", "amount")

# Same pattern as schemas/bar.v1.json (fullmatch here, so no anchors); the ts pattern is the wire's.
SYMBOL_RE = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
# Largest |value| accepted in any OHLCVA field. The engine normalizes a window in float32
# (kronos_rt/features.py: per-column mean and population std over up to max_context rows);
# the squared deviations summed for the std must stay far below float32's 3.4e38 even for
# windows of thousands of rows: (2 * 1e15)^2 * 8192 = 3.3e34. A 1e300 price would make
# every later forecast of its symbol non-finite for as long as it stays in the window.
MAX_MAGNITUDE = 1e15
_NON_FINITE_STRINGS = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    ts: str                   # as received
    time: _dt.datetime        # naive wall-clock time as written; an offset is dropped, not converted
    open: float
    high: float
    low: float
    close: float
    volume: float | None
    amount: float | None

    def values(self) -> tuple[float, float, float, float, float, float]:
        """OHLCVA with NaN for missing volume/amount (the Engine's convention)."""
        nan = math.nan
        return (self.open, self.high, self.low, self.close,
                nan if self.volume is None else self.volume,
                nan if self.amount is None else self.amount)


def _number(obj: dict, name: str) -> float:
    v = obj[name]
    t = type(v)
    # bool is an int subclass but not a JSON Schema number.
    if t is float or t is int:
        f = float(v)
        if not math.isfinite(f):
            raise InvalidEvent("non_finite", f"{name} is not finite")
        if abs(f) > MAX_MAGNITUDE:
            raise InvalidEvent("out_of_range", f"{name} is {f:g}; |values| above {MAX_MAGNITUDE:g} "
                                               "cannot be normalized in float32")
        return f
    if t is str and v.strip().lower() in _NON_FINITE_STRINGS:
        raise InvalidEvent("non_finite", f"{name} is {v!r}")
    raise InvalidEvent("schema", f"{name} must be a number, got {t.__name__}")


def _size(obj: dict, name: str) -> float | None:
    v = obj.get(name)
    if v is None:
        return None
    f = _number(obj, name)
    if f < 0:
        raise InvalidEvent("negative_volume", f"{name} is negative ({f})")
    return f


def _decode_error(value: bytes, err: Exception) -> InvalidEvent:
    # orjson rejects NaN/Infinity literals and overflowing numbers as plain JSON
    # errors; the stdlib parser (cold path only) tells those apart from garbage.
    found = []

    def constant(name):
        found.append(name)
        return math.nan

    try:
        doc = json.loads(value, parse_constant=constant)
        if found or _has_non_finite(doc):
            return InvalidEvent("non_finite", "payload contains NaN or Infinity")
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: nesting deeper than Python's stack (orjson stops at 1024 levels
        # first, so such a payload is not JSON this worker accepts anyway).
        pass
    return InvalidEvent("bad_json", str(err))


def _has_non_finite(doc) -> bool:
    if isinstance(doc, float):
        return not math.isfinite(doc)
    if isinstance(doc, dict):
        return any(_has_non_finite(v) for v in doc.values())
    if isinstance(doc, list):
        return any(_has_non_finite(v) for v in doc)
    return False


def parse_bar(value: bytes | None, key: bytes | None = None, max_bytes: int = 4096, *,
              policy: "BarPolicy | None" = None, timestamp_ms: int | None = None) -> Bar:
    """Validate one bar.v1 message value (and its Kafka key, if any) into a Bar; with a
    policy, also its place on the interval grid and its distance from the message's
    Kafka timestamp (`timestamp_ms`)."""
    if value is None or len(value) == 0:
        raise InvalidEvent("bad_json", "empty message value")
    if len(value) > max_bytes:
        raise InvalidEvent("oversized", f"{len(value)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise _decode_error(value, e) from None
    if type(obj) is not dict:
        raise InvalidEvent("schema", f"value must be a JSON object, got {type(obj).__name__}")

    symbol = obj.get("symbol")
    if symbol is None:
        raise InvalidEvent("schema", "missing symbol")
    if type(symbol) is not str or not SYMBOL_RE.fullmatch(symbol):
        raise InvalidEvent("bad_symbol", f"symbol must match [A-Za-z0-9._:-]{{1,64}}, got {symbol!r:.80}")
    if key is not None and key != symbol.encode():
        raise InvalidEvent("key_mismatch", f"key {key[:80]!r} != symbol {symbol!r}")

    ts = obj.get("ts")
    if ts is None:
        raise InvalidEvent("schema", "missing ts")
    written = parse_ts(ts)  # parsed once: the policy takes its offset from here
    time = written.replace(tzinfo=None) if written.tzinfo is not None else written

    for name in PRICE_COLUMNS:
        if name not in obj:
            raise InvalidEvent("schema", f"missing {name}")
    if time.microsecond:
        # Stored bars are keyed by whole seconds: a fraction would be cut and the bar would
        # overwrite another one's slot.
        raise InvalidEvent("sub_second", f"ts {ts!r} has a fraction of a second")
    o = _number(obj, "open")
    h = _number(obj, "high")
    lo = _number(obj, "low")
    c = _number(obj, "close")
    vol = _size(obj, "volume")
    amt = _size(obj, "amount")
    if min(o, h, lo, c) <= 0:
        raise InvalidEvent("non_positive_price", f"prices must be > 0, got o={o} h={h} l={lo} c={c}")
    if h < lo or h < o or h < c or lo > o or lo > c:
        raise InvalidEvent("high_low", f"inconsistent bar o={o} h={h} l={lo} c={c}")
    bar = Bar(symbol, ts, time, o, h, lo, c, vol, amt)
    if policy is not None:
        policy.check(bar, timestamp_ms, written.utcoffset())
    return bar


@dataclass(frozen=True)
class BarPolicy:
    """The checks a bar's value alone cannot settle, applied before anything reaches Redis
    (a bar stored there shapes every later forecast of its symbol):

    - off_grid: the bar time must lie on the interval grid. Intraday intervals count from
      midnight, from the Unix epoch (intervals that do not divide a day) or from any session
      open of the symbol's calendar that day (1h bars of a 09:30 open end at 10:30). Intervals of a
      day or more are not checked (daily bars carry whatever time of day the feed uses).
    - future_ts: the bar time may be at most `max_future_skew` after the message's Kafka
      timestamp. A ts with an offset is compared in UTC; a ts without one is compared as if
      it were UTC, so the default (1 day) leaves room for any zone's offset. A bar dated 2099
      would otherwise be published, then make every real bar of its symbol "out of order".
    - stale_ts: with `max_past_age`, the bar time may be at most that long before the Kafka
      timestamp (off by default: replays of history legitimately carry old bars).
    """
    interval: _dt.timedelta
    max_future_skew: _dt.timedelta = _dt.timedelta(days=1)
    max_past_age: _dt.timedelta | None = None
    calendar_for: object = None   # symbol -> calendar (worker/calendars/sessions.py); None: midnight/epoch grid

    def check(self, bar: Bar, timestamp_ms: int | None, utc_offset: _dt.timedelta | None) -> None:
        """utc_offset: the offset bar.ts carries (None: written without one); parse_bar has it."""
        if not self._on_grid(bar):
            raise InvalidEvent("off_grid", f"ts {bar.ts!r} is not on the {self.interval} grid")
        if timestamp_ms is None or timestamp_ms < 0:
            return  # no broker time to compare with (Kafka gives -1 when none was set)
        try:
            broker = _EPOCH + _dt.timedelta(milliseconds=timestamp_ms)
        except OverflowError:
            return  # a producer-set timestamp past year 9999: nothing to compare with
        try:
            utc = bar.time - utc_offset if utc_offset is not None else bar.time  # naive UTC
        except OverflowError:  # e.g. 9999-12-31T23:00-05:00 has no UTC datetime
            raise InvalidEvent("future_ts", f"ts {bar.ts!r} is beyond the datetime range") from None
        if utc - broker > self.max_future_skew:
            raise InvalidEvent("future_ts", f"ts {bar.ts!r} is more than {self.max_future_skew} after the "
                                            f"message timestamp {broker.isoformat()}Z")
        if self.max_past_age is not None and broker - utc > self.max_past_age:
            raise InvalidEvent("stale_ts", f"ts {bar.ts!r} is more than {self.max_past_age} before the "
                                           f"message timestamp {broker.isoformat()}Z")

    def _on_grid(self, bar: Bar) -> bool:
        step = self.interval
        if step >= _dt.timedelta(days=1):
            return True
        t = bar.time
        if (t - _EPOCH) % step == _ZERO:
            return True
        midnight = t.replace(hour=0, minute=0, second=0)
        if (t - midnight) % step == _ZERO:
            return True
        if self.calendar_for is not None:
            for opens in self.calendar_for(bar.symbol).opens_on(t):
                if (t - _dt.datetime.combine(t.date(), opens)) % step == _ZERO:
                    return True
        return False


_EPOCH = _dt.datetime(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_ZERO = _dt.timedelta(0)


def epoch_seconds(t: _dt.datetime) -> int:
    """Naive wall-clock time -> integer seconds, as if it were UTC (an offset is ignored, a
    fraction of a second cut): how Redis scores bar times (windows, forecast steps). From the
    fields: a tenth of the cost of datetime arithmetic, twice per bar."""
    return (t.toordinal() - _EPOCH_ORDINAL) * 86400 + t.hour * 3600 + t.minute * 60 + t.second


def dumps(obj) -> bytes:
    """JSON bytes; numpy scalars/arrays and datetimes serialize natively."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(b: bytes | str):
    return orjson.loads(b)


def format_ts(t) -> str:
    """datetime or numpy datetime64 -> 'YYYY-MM-DDTHH:MM:SS'."""
    if type(t) is _dt.datetime and t.tzinfo is None and t.year >= 1000:
        # The same text as strftime below (which pads no year under 1000 and ignores a zone),
        # in half the time: once per forecast step.
        return t.isoformat(timespec="seconds")
    if isinstance(t, np.datetime64):
        return str(t.astype("datetime64[s]"))
    return t.strftime("%Y-%m-%dT%H:%M:%S")


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

_now_text: tuple[int, str] = (-1, "")


def utc_now_ms() -> str:
    """The time now in UTC, ISO 8601 to the millisecond: what
    `datetime.now(timezone.utc).isoformat(timespec="milliseconds")` says, formatted once per
    millisecond (a batch's thousand forecasts are stamped within a few)."""
    global _now_text
    ms = time.time_ns() // 1_000_000
    held_ms, text = _now_text
    if ms != held_ms:
        whole = _dt.datetime.fromtimestamp(ms // 1000, _dt.timezone.utc)
        text = whole.replace(microsecond=ms % 1000 * 1000).isoformat(timespec="milliseconds")
        _now_text = (ms, text)
    return text


def build_forecast(*, symbol: str, as_of: str, interval_s: int, horizon_times: list,
                   mean: np.ndarray, quantiles: dict[float, np.ndarray],
                   model_name: str, model_version: str, sampling: dict, latency_ms: dict,
                   topic: str, partition: int, offset: int, worker_id: str,
                   calibrated: list | None = None, calibration: dict | None = None,
                   random_weights: bool = False) -> dict:
    """A forecast.v1 dict. mean is [P, 6] in COLUMNS order, quantiles maps
    level -> [P, 6]; both are turned into plain Python floats. Non-finite values
    are not checked here (orjson would write them as null, which the schema rejects).
    calibrated: per step, {column: one value per level} or None (worker/quality/live.py), with
    calibration = {"levels", "scores", "source"} saying what stands behind them."""
    if not (isinstance(mean, np.ndarray) and mean.dtype in _FLOATS):
        mean = np.asarray(mean, dtype=np.float64)  # float32's tolist() gives the same Python floats
    if mean.ndim != 2 or mean.shape[1] != len(COLUMNS) or mean.shape[0] != len(horizon_times):
        raise ValueError(f"mean must be [{len(horizon_times)}, 6], got {mean.shape}")
    levels = sorted(map(float, quantiles)) if quantiles else []
    qstack = None
    if levels:
        # [P, 6, Q]: one list per (step, column), in level order.
        qstack = np.stack([np.asarray(quantiles[q], dtype=np.float64) for q in sorted(quantiles)], axis=-1)
        if qstack.shape[:2] != mean.shape:
            raise ValueError(f"quantile arrays must be {mean.shape}, got {qstack.shape[:2]}")
    rows = mean.tolist()
    horizon = []
    for i, t in enumerate(horizon_times):
        entry = {"ts": format_ts(t)}
        entry.update(zip(COLUMNS, rows[i]))
        if qstack is not None:
            entry["quantiles"] = dict(zip(COLUMNS, qstack[i].tolist()))
        if calibrated is not None and calibrated[i] is not None:
            entry["calibrated_quantiles"] = calibrated[i]
        horizon.append(entry)
    if calibration is not None:
        levels = levels or list(calibration["levels"])
    doc = {
        "schema": "forecast.v1",
        "symbol": symbol,
        "as_of": as_of,
        "interval_s": int(interval_s),
        "horizon": horizon,
        "quantile_levels": levels,
        "model": {"name": str(model_name), "version": str(model_version)},
        "sampling": dict(sampling),
        "latency_ms": {k: float(v) for k, v in latency_ms.items()},
        "source": {"topic": topic, "partition": int(partition), "offset": int(offset)},
        "worker_id": worker_id,
        "produced_at": utc_now_ms(),
        # Said in every message, so no consumer mistakes a random-weight model's numbers for a forecast.
        "random_weights": bool(random_weights),
    }
    if calibration is not None:
        doc["calibration"] = {"scores": int(calibration["scores"]), "source": str(calibration["source"])}
    return doc

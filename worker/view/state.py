"""The view's store: what the page shows, bounded, fed one message value at a time.

Per symbol it keeps the last `max_bars` bars (by bar time; a bar sent again replaces its
earlier copy), the last `max_forecasts` forecasts (by as_of; redelivered copies dropped, by
worker.events.forecast_identity) and the newest score; at most `max_symbols` symbols, the one
updated longest ago making room for a new one. A message that does not parse (worker.events
parse_bar, worker.client parse_forecast, a score.v1 check here) is skipped and counted in
`stats["invalid"]`, never raised.

Times go to the page as seconds since 1970 of the bar time's wall clock as written (no
offset, no zone): the chart shows the wall clock the feed used, as `kronos-rt tail` does.

Every change is offered to the subscribers (one per open page, app.py's event stream): a
`summary` of any symbol, and the `bar`, `forecast` or `score` of the symbol the page shows.
A subscriber's queue is bounded; when a slow page lets it fill, further events are dropped and
the page is told to fetch a fresh snapshot instead.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass

import orjson

from kronos_rt_client.client import ForecastView, parse_forecast
from worker.contracts.events import SYMBOL_RE, Bar, InvalidEvent, epoch_seconds, parse_bar, parse_time

log = logging.getLogger(__name__)

KINDS = ("bars", "forecasts", "scores")
LOGGED_INVALID = 5  # invalid messages logged per kind; the rest are only counted


@dataclass(frozen=True)
class Limits:
    max_bars: int = 500        # per symbol
    max_forecasts: int = 20    # per symbol
    max_symbols: int = 1000

    def __post_init__(self):
        for name in ("max_bars", "max_forecasts", "max_symbols"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class SymbolData:
    __slots__ = ("times", "bars", "forecasts", "keys", "score")

    def __init__(self):
        self.times: list[int] = []               # sorted bar times
        self.bars: dict[int, list] = {}          # time -> [time, open, high, low, close]
        self.forecasts: list[dict] = []          # page entries, oldest as_of first
        self.keys: dict[tuple, dict] = {}        # identity -> entry, for the forecasts held
        self.score: dict | None = None


def forecast_entry(fc: ForecastView, doc: dict) -> dict:
    """What the page draws of one forecast: the mean close path and the close bands, raw
    (lowest and highest quantile level) and calibrated (where the message has them)."""
    levels = fc.quantile_levels
    path = [[epoch_seconds(s.ts), s.close] for s in fc.horizon]
    raw = None
    if len(levels) >= 2 and all(s.quantiles and len(s.quantiles.get("close") or ()) == len(levels)
                                for s in fc.horizon):
        raw = [[t, s.quantiles["close"][0], s.quantiles["close"][-1]] for (t, _), s in zip(path, fc.horizon)]
    calibrated = []
    for (t, _), h in zip(path, doc["horizon"]):
        q = (h.get("calibrated_quantiles") or {}).get("close") if isinstance(h, dict) else None
        if (len(levels) >= 2 and isinstance(q, list) and len(q) == len(levels)
                and all(type(x) in (int, float) and math.isfinite(x) for x in q)):
            calibrated.append([t, float(q[0]), float(q[-1])])
    calibration = doc.get("calibration")
    return {
        "as_of": epoch_seconds(fc.as_of), "as_of_raw": fc.as_of_raw, "interval_s": fc.interval_s,
        "produced_at": fc.produced_at.isoformat(timespec="milliseconds"),
        "model": f"{fc.model_name}@{fc.model_version}", "random_weights": fc.random_weights,
        "latency_ms": fc.latency_ms.get("total"),
        "levels": [levels[0], levels[-1]] if len(levels) >= 2 else None,
        "path": path, "raw": raw, "calibrated": calibrated or None,
        "calibration": str(calibration.get("source")) if isinstance(calibration, dict) else None,
        "next_close": path[0][1], "band": raw[0][1:] if raw else None,
    }


def parse_score(value: bytes) -> dict:
    """The few fields of a score.v1 message the page shows. ValueError when it is not one."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != "score.v1":
        raise ValueError("not a score.v1 message")
    symbol, step = doc.get("symbol"), doc.get("step")
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol) or type(step) is not int:
        raise ValueError("score.v1 without a valid symbol and step")
    try:
        as_of, ts = parse_time(doc["as_of"]), parse_time(doc["ts"])
    except (KeyError, InvalidEvent) as exc:
        raise ValueError(f"score.v1 with a bad time: {exc}") from None

    def num(name):
        v = doc.get(name)
        return float(v) if type(v) in (int, float) and math.isfinite(v) else None

    return {"symbol": symbol, "as_of": epoch_seconds(as_of), "ts": epoch_seconds(ts), "step": step,
            "abs_error": num("abs_error"), "persistence_abs_error": num("persistence_abs_error"),
            "direction_hit": doc.get("direction_hit") if isinstance(doc.get("direction_hit"), bool) else None}


class Subscriber:
    """One open page's event queue: summaries of every symbol, details of its own symbol."""

    def __init__(self, symbol: str | None, maxsize: int = 1000):
        self.symbol = symbol
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)
        self.overflowed = False  # events were dropped: the page must reload its snapshot

    def offer(self, event: dict) -> None:
        if event["type"] not in ("summary", "evicted") and event["symbol"] != self.symbol:
            return
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class ViewState:
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.symbols: OrderedDict[str, SymbolData] = OrderedDict()  # least recently updated first
        self.subscribers: set[Subscriber] = set()
        self.stats = {"messages": Counter(), "invalid": Counter(), "duplicates": 0, "evicted_symbols": 0,
                      "old_bars_dropped": 0, "old_forecasts_dropped": 0}

    # -- feeding ---------------------------------------------------------------------------
    def feed(self, kind: str, value: bytes | None, key: bytes | None = None, where: str = "") -> bool:
        """One message value of the `kind` topic ("bars", "forecasts", "scores"): stored and
        offered to the pages. False when it was malformed (skipped and counted) or not new."""
        self.stats["messages"][kind] += 1
        try:
            if value is None:
                raise ValueError("empty message value")
            if kind == "bars":
                return self.add_bar(parse_bar(value, key))
            if kind == "forecasts":
                fc = parse_forecast(value)
                if not SYMBOL_RE.fullmatch(fc.symbol):
                    raise ValueError(f"symbol {fc.symbol[:80]!r} is not a valid symbol")
                return self.add_forecast(fc, orjson.loads(value))
            if kind == "scores":
                return self.add_score(parse_score(value))
            raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, InvalidEvent) as exc:
            self.stats["invalid"][kind] += 1
            n = self.stats["invalid"][kind]
            if n <= LOGGED_INVALID:
                log.warning("skipping a malformed message on the %s topic%s: %s%s", kind,
                            f" ({where})" if where else "", exc,
                            " (further ones are only counted)" if n == LOGGED_INVALID else "")
            return False

    def _symbol(self, symbol: str) -> SymbolData:
        data = self.symbols.get(symbol)
        if data is not None:
            self.symbols.move_to_end(symbol)
            return data
        if len(self.symbols) >= self.limits.max_symbols:
            gone, _ = self.symbols.popitem(last=False)
            self.stats["evicted_symbols"] += 1
            self._publish({"type": "evicted", "symbol": gone})
        data = self.symbols[symbol] = SymbolData()
        return data

    def add_bar(self, bar: Bar) -> bool:
        is_new = bar.symbol not in self.symbols
        data = self._symbol(bar.symbol)
        t = epoch_seconds(bar.time)
        row = [t, bar.open, bar.high, bar.low, bar.close]
        if t not in data.bars:
            if len(data.times) >= self.limits.max_bars and t < data.times[0]:
                self.stats["old_bars_dropped"] += 1  # older than everything kept: not shown anyway
                return False
            bisect.insort(data.times, t)
            if len(data.times) > self.limits.max_bars:
                del data.bars[data.times.pop(0)]
        data.bars[t] = row
        self._publish({"type": "bar", "symbol": bar.symbol, "bar": row})
        if is_new:
            self._publish({"type": "summary", "symbol": bar.symbol, "summary": self.summary(bar.symbol)})
        return True

    def add_forecast(self, fc: ForecastView, doc: dict) -> bool:
        data = self._symbol(fc.symbol)
        key = fc.dedup_key
        if key in data.keys:
            self.stats["duplicates"] += 1
            return False
        entry = forecast_entry(fc, doc)
        order = (entry["as_of"], entry["produced_at"])
        held = [(f["as_of"], f["produced_at"]) for f in data.forecasts]
        if len(held) >= self.limits.max_forecasts and order < held[0]:
            self.stats["old_forecasts_dropped"] += 1
            return False
        i = bisect.bisect_right(held, order)
        data.forecasts.insert(i, entry)
        data.keys[key] = entry
        if len(data.forecasts) > self.limits.max_forecasts:
            gone = data.forecasts.pop(0)
            data.keys = {k: e for k, e in data.keys.items() if e is not gone}
        self._publish({"type": "forecast", "symbol": fc.symbol, "forecast": entry})
        self._publish({"type": "summary", "symbol": fc.symbol, "summary": self.summary(fc.symbol)})
        return True

    def add_score(self, score: dict) -> bool:
        data = self._symbol(score["symbol"])
        data.score = score
        self._publish({"type": "score", "symbol": score["symbol"], "score": score})
        self._publish({"type": "summary", "symbol": score["symbol"], "summary": self.summary(score["symbol"])})
        return True

    # -- reading ---------------------------------------------------------------------------
    def summary(self, symbol: str) -> dict:
        """The symbol list's row: the latest forecast's time, next close, band, latency, model."""
        data = self.symbols[symbol]
        fc = data.forecasts[-1] if data.forecasts else None
        last_bar = data.bars[data.times[-1]] if data.times else None
        return {
            "symbol": symbol, "bars": len(data.times), "forecasts": len(data.forecasts),
            "last_bar": last_bar[0] if last_bar else None, "last_close": last_bar[4] if last_bar else None,
            "as_of": fc["as_of"] if fc else None, "as_of_raw": fc["as_of_raw"] if fc else None,
            "next_close": fc["next_close"] if fc else None, "band": fc["band"] if fc else None,
            "levels": fc["levels"] if fc else None, "latency_ms": fc["latency_ms"] if fc else None,
            "model": fc["model"] if fc else None, "random_weights": fc["random_weights"] if fc else False,
            "score": data.score,
        }

    def summaries(self) -> list[dict]:
        return [self.summary(s) for s in sorted(self.symbols)]

    def snapshot(self, symbol: str) -> dict | None:
        """Everything the page draws for `symbol`, None when the symbol is not held."""
        data = self.symbols.get(symbol)
        if data is None:
            return None
        return {"symbol": symbol, "bars": [data.bars[t] for t in data.times], "forecasts": list(data.forecasts),
                "score": data.score, "summary": self.summary(symbol)}

    def stats_view(self) -> dict:
        s = self.stats
        return {"symbols": len(self.symbols), "messages": dict(s["messages"]), "invalid": dict(s["invalid"]),
                "duplicates": s["duplicates"], "evicted_symbols": s["evicted_symbols"],
                "old_bars_dropped": s["old_bars_dropped"], "old_forecasts_dropped": s["old_forecasts_dropped"],
                "pages": len(self.subscribers),
                "limits": {"max_bars": self.limits.max_bars, "max_forecasts": self.limits.max_forecasts,
                           "max_symbols": self.limits.max_symbols}}

    # -- pages -----------------------------------------------------------------------------
    def subscribe(self, symbol: str | None, maxsize: int = 1000) -> Subscriber:
        sub = Subscriber(symbol, maxsize)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _publish(self, event: dict) -> None:
        for sub in self.subscribers:
            sub.offer(event)

"""Subscriber client for forecast.v1 messages, for trading engines and dashboards.

    import asyncio
    from kronos_rt_client import ForecastClient

    async def main():
        async with ForecastClient("127.0.0.1:9092", topic="forecasts.5m",
                                  symbols={"600977.SH"}) as client:
            async for fc in client:                  # ForecastView, duplicates already dropped
                nxt = fc.horizon[0]
                band = fc.band(0.1, 0.9)[0] if {0.1, 0.9} <= set(fc.quantile_levels) else None
                print(fc.symbol, fc.as_of, "next close", nxt.close, "80% band", band,
                      f"{fc.model_name}@{fc.model_version}", f"{fc.latency_ms['total']:.0f} ms")
                print("age of the newest forecast:", client.staleness(fc.symbol))

    asyncio.run(main())

Delivery is at-least-once upstream, so the same forecast can arrive twice (a worker
that restarts re-publishes what it had not committed). The client drops repeats of
(symbol, as_of, model name, model version) it has seen, remembering the last
`dedup_capacity` keys. Forecasts can also arrive out of as_of order (a rebalance hands
a partition to a worker that is catching up); they are still yielded, but `latest()`
only ever moves forward in as_of.

Without a group_id the client reads every partition and commits nothing (each process
sees everything); with one, partitions are shared across the group and offsets are
committed automatically. `from_beginning=True` starts at the oldest retained forecast
instead of the newest. `feed()` takes raw message values from any other consumer.
A secured cluster: `security=KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism=
"SCRAM-SHA-512", sasl_username=..., sasl_password=..., ssl_cafile=...)` (kronos_rt_client.KafkaSecurity).
"""
from __future__ import annotations

import datetime as _dt
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import orjson

from kronos_rt_client.wire import COLUMNS, InvalidEvent, forecast_identity, parse_time

log = logging.getLogger(__name__)

_UTC = _dt.timezone.utc


@dataclass(frozen=True, slots=True)
class HorizonStep:
    ts: _dt.datetime  # bar time, naive wall clock as the worker wrote it
    open: float
    high: float
    low: float
    close: float
    volume: float
    amount: float
    quantiles: dict[str, tuple[float, ...]] | None = None  # column -> one value per quantile level

    def __repr__(self) -> str:
        return f"HorizonStep({self.ts:%Y-%m-%d %H:%M} close={self.close:.6g})"


@dataclass(frozen=True, slots=True)
class ForecastView:
    symbol: str
    as_of: _dt.datetime      # time of the newest bar the forecast used (naive wall clock)
    as_of_raw: str           # the same, exactly as in the message
    interval_s: int
    horizon: tuple[HorizonStep, ...]
    quantile_levels: tuple[float, ...]
    model_name: str
    model_version: str
    latency_ms: dict[str, float]
    produced_at: _dt.datetime  # worker clock, UTC
    received_at: _dt.datetime  # this process's clock, UTC
    worker_id: str
    topic: str                 # where this forecast message was read
    partition: int
    offset: int
    source_topic: str          # the bar that triggered it
    source_partition: int
    source_offset: int
    random_weights: bool = False  # made by a random-weight model: the numbers mean nothing

    def __repr__(self) -> str:
        nxt = self.horizon[0]
        band = self.close_band()
        return (f"<Forecast {self.symbol} as_of={self.as_of:%Y-%m-%d %H:%M} next_close={nxt.close:.6g}"
                + (f" band=[{band[0]:.6g}, {band[1]:.6g}]" if band else "")
                + f" steps={len(self.horizon)} model={self.model_name}@{self.model_version}"
                + (" RANDOM-WEIGHTS" if self.random_weights else "")
                + f" latency={self.latency_ms.get('total', float('nan')):.0f}ms>")

    def close_band(self, step: int = 0) -> tuple[float, float] | None:
        """(lowest, highest) close quantile at `step`, None when the forecast has no quantiles."""
        q = self.horizon[step].quantiles
        if not q or "close" not in q or len(self.quantile_levels) < 2:
            return None
        return q["close"][0], q["close"][-1]

    @property
    def dedup_key(self) -> tuple:
        return forecast_identity(self.symbol, self.as_of, self.model_name, self.model_version)

    def quantile(self, level: float, column: str = "close") -> list[float]:
        """The `level` quantile of `column` along the horizon."""
        try:
            i = self.quantile_levels.index(float(level))
        except ValueError:
            raise KeyError(f"quantile level {level} not in {list(self.quantile_levels)}") from None
        if any(s.quantiles is None or column not in s.quantiles for s in self.horizon):
            raise KeyError(f"no {column} quantiles in this forecast")
        return [s.quantiles[column][i] for s in self.horizon]

    def band(self, lo: float, hi: float, column: str = "close") -> list[tuple[float, float]]:
        """(lo, hi) quantiles of `column` per horizon step."""
        return list(zip(self.quantile(lo, column), self.quantile(hi, column)))


@dataclass(frozen=True, slots=True)
class Staleness:
    symbol: str
    as_of: _dt.datetime
    model: str
    produced_at: _dt.datetime
    received_at: _dt.datetime
    since_produced: _dt.timedelta  # now - produced_at: includes any clock skew to the worker
    since_received: _dt.timedelta  # now - received_at: this machine's clock only


def _utc(t: _dt.datetime) -> _dt.datetime:
    return t.replace(tzinfo=_UTC) if t.tzinfo is None else t.astimezone(_UTC)


def parse_forecast(value: bytes | str, *, topic: str = "", partition: int = -1, offset: int = -1,
                   received_at: _dt.datetime | None = None) -> ForecastView:
    """A forecast.v1 message value -> ForecastView. ValueError when it is not one."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != "forecast.v1":
        raise ValueError(f"not a forecast.v1 message (schema={doc.get('schema') if isinstance(doc, dict) else None!r})")
    try:
        levels = tuple(float(q) for q in doc.get("quantile_levels") or ())
        steps = []
        for h in doc["horizon"]:
            q = h.get("quantiles")
            steps.append(HorizonStep(
                parse_time(h["ts"]), *(float(h[c]) for c in COLUMNS),
                quantiles={k: tuple(float(x) for x in v) for k, v in q.items()} if q else None))
        if not steps:
            raise ValueError("empty horizon")
        produced = _dt.datetime.fromisoformat(doc["produced_at"])
        model, src = doc["model"], doc["source"]
        return ForecastView(
            symbol=str(doc["symbol"]), as_of=parse_time(doc["as_of"]), as_of_raw=doc["as_of"],
            interval_s=int(doc["interval_s"]), horizon=tuple(steps), quantile_levels=levels,
            model_name=str(model["name"]), model_version=str(model["version"]),
            latency_ms={k: float(v) for k, v in doc["latency_ms"].items()},
            produced_at=_utc(produced), received_at=received_at or _dt.datetime.now(_UTC),
            worker_id=str(doc.get("worker_id", "")), topic=topic, partition=partition, offset=offset,
            source_topic=str(src["topic"]), source_partition=int(src["partition"]),
            source_offset=int(src["offset"]), random_weights=bool(doc.get("random_weights", False)),
        )
    except InvalidEvent as exc:
        raise ValueError(f"bad timestamp: {exc.detail}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed forecast.v1: {type(exc).__name__}: {exc}") from None


class ForecastClient:
    def __init__(self, bootstrap: str, topic: str = "forecasts.5m", group_id: str | None = None,
                 symbols: Iterable[str] | None = None, *, from_beginning: bool = False,
                 dedup_capacity: int = 100_000, security=None, **consumer_options):
        if dedup_capacity < 1:
            raise ValueError("dedup_capacity must be >= 1")
        self.bootstrap, self.topic, self.group_id = bootstrap, topic, group_id
        self.symbols = frozenset(symbols) if symbols is not None else None
        self.from_beginning = from_beginning
        self.dedup_capacity = dedup_capacity
        self._consumer_options = consumer_options
        self.security = security  # kronos_rt_client.security.KafkaSecurity: TLS/SASL towards the brokers
        self._consumer = None
        self._seen: OrderedDict[tuple, None] = OrderedDict()  # insertion order = LRU order
        self._latest: dict[str, ForecastView] = {}
        self.stats = {"received": 0, "yielded": 0, "duplicates": 0, "invalid": 0, "filtered": 0, "out_of_order": 0}

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> "ForecastClient":
        from aiokafka import AIOKafkaConsumer

        from kronos_rt_client.security import client_kwargs

        if self._consumer is not None:
            return self
        options = dict(
            **client_kwargs(self.bootstrap, self.security), group_id=self.group_id, client_id="kronos-rt-client",
            auto_offset_reset="earliest" if self.from_beginning else "latest",
            enable_auto_commit=self.group_id is not None,
        )
        options.update(self._consumer_options)
        consumer = AIOKafkaConsumer(self.topic, **options)
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()  # it never connected, but holds a client to close
            raise
        self._consumer = consumer
        return self

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> "ForecastClient":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- consuming -------------------------------------------------------------------------
    def __aiter__(self) -> "ForecastClient":
        return self

    async def __anext__(self) -> ForecastView:
        from aiokafka.errors import ConsumerStoppedError

        while True:
            if self._consumer is None:
                raise StopAsyncIteration
            try:
                msg = await self._consumer.getone()
            except ConsumerStoppedError:  # stop() was called while we waited
                raise StopAsyncIteration from None
            view = self.feed(msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset)
            if view is not None:
                return view

    def feed(self, value: bytes, *, topic: str = "", partition: int = -1, offset: int = -1,
             received_at: _dt.datetime | None = None) -> ForecastView | None:
        """Process one message value: the ForecastView, or None if it is invalid, filtered
        out by `symbols` or a duplicate. Updates latest() and the stats."""
        self.stats["received"] += 1
        try:
            view = parse_forecast(value, topic=topic, partition=partition, offset=offset, received_at=received_at)
        except ValueError as exc:
            self.stats["invalid"] += 1
            log.warning("skipping invalid forecast at %s[%d]@%d: %s", topic, partition, offset, exc)
            return None
        if self.symbols is not None and view.symbol not in self.symbols:
            self.stats["filtered"] += 1
            return None
        key = view.dedup_key
        if key in self._seen:
            self._seen.move_to_end(key)
            self.stats["duplicates"] += 1
            return None
        self._seen[key] = None
        if len(self._seen) > self.dedup_capacity:
            self._seen.popitem(last=False)
        current = self._latest.get(view.symbol)
        if current is None or (view.as_of, view.produced_at) >= (current.as_of, current.produced_at):
            self._latest[view.symbol] = view
        else:
            self.stats["out_of_order"] += 1
        self.stats["yielded"] += 1
        return view

    # -- state -----------------------------------------------------------------------------
    def latest(self, symbol: str) -> ForecastView | None:
        """The forecast with the newest as_of seen for `symbol` (None if none yet)."""
        return self._latest.get(symbol)

    def symbols_seen(self) -> list[str]:
        return sorted(self._latest)

    def staleness(self, symbol: str, now: _dt.datetime | None = None, basis: str = "produced") -> _dt.timedelta:
        """Age of the latest forecast for `symbol`: now - produced_at (basis="produced", the
        worker's clock) or now - received_at (basis="received", this machine's clock)."""
        fc = self._latest.get(symbol)
        if fc is None:
            raise KeyError(f"no forecast for {symbol!r} yet")
        now = _utc(now) if now is not None else _dt.datetime.now(_UTC)
        if basis == "produced":
            return now - fc.produced_at
        if basis == "received":
            return now - fc.received_at
        raise ValueError(f"basis must be 'produced' or 'received', got {basis!r}")

    def staleness_report(self, now: _dt.datetime | None = None) -> list[Staleness]:
        """One row per symbol seen, the stalest first."""
        now = _utc(now) if now is not None else _dt.datetime.now(_UTC)
        rows = [Staleness(s, fc.as_of, f"{fc.model_name}@{fc.model_version}", fc.produced_at, fc.received_at,
                          now - fc.produced_at, now - fc.received_at) for s, fc in self._latest.items()]
        return sorted(rows, key=lambda r: r.since_produced, reverse=True)

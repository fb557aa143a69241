"""Request bodies of the HTTP API. Types and ranges that need no server settings are
checked here (the error then names the field); the rest is in service.py."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, create_model

# Strict numbers: a JSON string or bool is not a price. NaN/Infinity literals are refused too.
Num = Annotated[float, Field(strict=True)]
Size = Annotated[float, Field(strict=True, ge=0)]
MAX_SAMPLE_COUNT = 256   # paths per forecast: each costs a batch row on the engine
MAX_QUANTILES = 16


def request_models(strict: bool) -> tuple[type[BaseModel], type[BaseModel]]:
    """(ForecastRequest, BatchRequest); strict: unknown fields are errors, else ignored."""
    return _models(strict)[:2]


@lru_cache(maxsize=2)
def _models(strict: bool) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """(ForecastRequest, BatchRequest, Head): Head is ForecastRequest without its bars."""
    cfg = ConfigDict(extra="forbid" if strict else "ignore", allow_inf_nan=False)

    class Bar(BaseModel):
        model_config = cfg
        ts: StrictStr = Field(description="bar time, ISO 8601 (offset dropped, wall clock kept)",
                              examples=["2024-06-18T11:15:00"])
        open: Num
        high: Num
        low: Num
        close: Num
        volume: Size | None = Field(None, description="missing: 0 (and amount 0)")
        amount: Size | None = Field(None, description="missing: volume x mean price")

    class Sampling(BaseModel):
        model_config = cfg
        temperature: Annotated[float, Field(strict=True, gt=0)] | None = None
        top_k: Annotated[int, Field(strict=True, ge=0)] | None = Field(None, description="1 = greedy")
        top_p: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
        sample_count: Annotated[int, Field(strict=True, ge=1, le=MAX_SAMPLE_COUNT)] | None = None

    class ForecastRequest(BaseModel):
        model_config = cfg
        symbol: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._:\-]{1,64}$")] = "adhoc"
        bars: list[Bar] = Field(description="oldest first, strictly increasing ts")
        pred_len: Annotated[int, Field(strict=True)] | None = Field(
            None, description="future bars (default: the server's --pred-len, or len(future_ts))")
        future_ts: list[StrictStr] | None = Field(
            None, description="timestamps of the future bars (default: from the interval and session calendar)")
        interval: StrictStr | None = Field(None, description="bar interval, e.g. 5m (default: the server's)")
        sampling: Sampling | None = None
        quantiles: Annotated[list[Annotated[float, Field(strict=True, gt=0, lt=1)]],
                             Field(max_length=MAX_QUANTILES)] | None = None

    class BatchRequest(BaseModel):
        model_config = cfg
        series: list[ForecastRequest]

    head = create_model("ForecastHead", __config__=cfg, **{
        name: (f.annotation, f) for name, f in ForecastRequest.model_fields.items() if name != "bars"})
    return ForecastRequest, BatchRequest, head


# -- the fast path ----------------------------------------------------------------------
# pydantic builds one model object per bar (~1 us a field); a burst of requests of 256
# bars each then queues behind the event loop and misses the batch it could have joined.
# The fast path takes the common shape of a request (orjson, bars as plain numbers, ts as
# YYYY-MM-DDTHH:MM:SS) column-wise and checks it with numpy. It only ever accepts what the
# pydantic models accept: anything else (a bad field, an unusual but valid form) returns
# None and goes down the pydantic path, whose errors name the field.

BAR_FIELDS = ("ts", "open", "high", "low", "close", "volume", "amount")
_REQUIRED = frozenset(BAR_FIELDS[:5])
_ALLOWED = frozenset(BAR_FIELDS)
_NUM = (int, float)


@dataclass
class Series:
    """A request's bars column-wise: the form ForecastService.prepare works on."""
    ts: list                 # the bars' ts as given
    values: np.ndarray       # [L, 6] float64 in BAR_FIELDS[1:] order, NaN = volume/amount missing


@dataclass
class FastRequest:
    """ForecastRequest's fields (from `head`) with its bars as a Series."""
    head: Any
    series: Series

    def __getattr__(self, name):  # symbol, pred_len, future_ts, interval, sampling, quantiles
        return getattr(self.head, name)


def _column(bars: list, name: str, optional: bool) -> list | None:
    col = [b.get(name) for b in bars] if optional else [b[name] for b in bars]
    kinds = set(map(type, col))
    if optional:
        kinds.discard(type(None))
    if not kinds <= {int, float}:
        return None
    return col


def series_of(bars, strict: bool) -> Series | None:
    """Plain-JSON bars -> Series, or None when any bar is not in the common, valid form."""
    if type(bars) is not list or not bars or set(map(type, bars)) != {dict}:
        return None
    for keys in {tuple(b) for b in bars}:  # usually one key layout for all bars
        k = frozenset(keys)
        if not _REQUIRED <= k or (strict and not k <= _ALLOWED):
            return None
    ts = [b["ts"] for b in bars]
    if set(map(type, ts)) != {str}:
        return None
    cols = []
    for i, name in enumerate(BAR_FIELDS[1:]):
        col = _column(bars, name, optional=i >= 4)
        if col is None:
            return None
        cols.append(col)
    try:
        nan = float("nan")
        values = np.array(cols[:4] + [[nan if v is None else v for v in c] for c in cols[4:]], dtype=np.float64).T
    except (OverflowError, ValueError):
        return None
    prices, sizes = values[:, :4], values[:, 4:]
    if not np.isfinite(prices).all() or np.isinf(sizes).any() or (sizes < 0).any():
        return None
    return Series(ts, np.ascontiguousarray(values))


def _loads(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def fast_request(raw: bytes, strict: bool) -> FastRequest | None:
    """A /v1/forecast body -> FastRequest, or None: then parse it with the pydantic model."""
    return _fast(_loads(raw), strict)


def fast_batch(raw: bytes, strict: bool) -> list[FastRequest] | None:
    """A /v1/forecast:batch body -> its series as FastRequests, or None (pydantic path)."""
    body = _loads(raw)
    if type(body) is not dict or type(body.get("series")) is not list or (strict and len(body) != 1):
        return None
    out = [_fast(item, strict) for item in body["series"]]
    return None if any(r is None for r in out) else out


def _fast(body, strict: bool) -> FastRequest | None:
    if type(body) is not dict:
        return None
    series = series_of(body.get("bars"), strict)
    if series is None:
        return None
    try:
        head = _models(strict)[2].model_validate({k: v for k, v in body.items() if k != "bars"})
    except ValidationError:
        return None
    return FastRequest(head, series)


def series_of_model(req) -> Series:
    """A validated ForecastRequest's bars -> Series."""
    nan = float("nan")
    return Series([b.ts for b in req.bars], np.array(
        [(b.open, b.high, b.low, b.close, nan if b.volume is None else b.volume,
          nan if b.amount is None else b.amount) for b in req.bars], dtype=np.float64).reshape(-1, 6))

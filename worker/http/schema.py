"""Request bodies of the HTTP API. Types and ranges that need no server settings are
checked here (the error then names the field); the rest is in service.py."""
from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

# Strict numbers: a JSON string or bool is not a price. NaN/Infinity literals are refused too.
Num = Annotated[float, Field(strict=True)]
Size = Annotated[float, Field(strict=True, ge=0)]
MAX_SAMPLE_COUNT = 256   # paths per forecast: each costs a batch row on the engine
MAX_QUANTILES = 16


@lru_cache(maxsize=2)
def request_models(strict: bool) -> tuple[type[BaseModel], type[BaseModel]]:
    """(ForecastRequest, BatchRequest); strict: unknown fields are errors, else ignored."""
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

    return ForecastRequest, BatchRequest

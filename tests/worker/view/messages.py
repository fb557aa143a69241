"""bar.v1 and forecast.v1 message values for the view's tests, built with worker.events."""
from __future__ import annotations

import datetime as dt

import numpy as np

from worker.contracts.events import build_forecast, dumps

T0 = dt.datetime(2024, 1, 2, 9, 35)
STEP = dt.timedelta(minutes=5)


def ts(i: int) -> str:
    return (T0 + i * STEP).strftime("%Y-%m-%dT%H:%M:%S")


def bar(symbol: str, i: int, close: float) -> bytes:
    return dumps({"symbol": symbol, "ts": ts(i), "open": close, "high": close * 1.01, "low": close * 0.99,
                  "close": close, "volume": 100.0})


def forecast(symbol: str, i: int, close: float, pred_len: int = 4, calibrated: bool = True,
             model: str = "m", version: str = "1", random_weights: bool = False) -> bytes:
    """A forecast made at bar i: mean close+k*0.1 at step k, raw band +-0.05*k, calibrated +-0.08*k."""
    steps = np.arange(1, pred_len + 1, dtype=float)
    mean = np.tile((close + 0.1 * steps)[:, None], (1, 6))
    q = {0.1: mean - 0.05 * steps[:, None], 0.5: mean, 0.9: mean + 0.05 * steps[:, None]}
    cal = None
    if calibrated:
        cal = [{"close": [close + 0.1 * k - 0.08 * k, close + 0.1 * k, close + 0.1 * k + 0.08 * k]} for k in steps]
    doc = build_forecast(symbol=symbol, as_of=ts(i), interval_s=300,
                         horizon_times=[T0 + (i + k) * STEP for k in range(1, pred_len + 1)],
                         mean=mean, quantiles=q, model_name=model, model_version=version, sampling={},
                         latency_ms={"total": 12.5}, topic="bars", partition=0, offset=i, worker_id="w",
                         calibrated=cal, calibration={"levels": [0.1, 0.5, 0.9], "scores": 25, "source": "pool:all"}
                         if calibrated else None, random_weights=random_weights)
    return dumps(doc)


def epoch(i: int) -> int:
    return int((T0 + i * STEP - dt.datetime(1970, 1, 1)).total_seconds())

"""Scores computed by hand from a tape and the forecasts, for the live-scoring tests."""
from __future__ import annotations

import pandas as pd


def by_ts(rows: pd.DataFrame) -> dict:
    return {(s, t.strftime("%Y-%m-%dT%H:%M:%S")): c for s, t, c in zip(rows["symbol"], rows["time"], rows["close"])}


def hand_scores(fcs: list[dict], rows: pd.DataFrame) -> dict:
    """(symbol, as_of, step) -> figures computed here from the forecast and the tape."""
    close = by_ts(rows)
    series = {s: g["close"].to_numpy() for s, g in rows.groupby("symbol")}
    times = {s: [t.strftime("%Y-%m-%dT%H:%M:%S") for t in g["time"]] for s, g in rows.groupby("symbol")}
    out = {}
    for f in fcs:
        sym, as_of = f["symbol"], f["as_of"]
        i = times[sym].index(as_of)
        c = series[sym][: i + 1]
        k = min(len(c) - 1, 20)
        drift = (c[-1] - c[-1 - k]) / k
        for step, h in enumerate(f["horizon"], 1):
            y = close.get((sym, h["ts"]))
            if y is None:
                continue
            out[(sym, as_of, step)] = {
                "abs_error": abs(h["close"] - y), "persistence_abs_error": abs(c[-1] - y),
                "drift_abs_error": abs(c[-1] + step * drift - y),
                "direction_hit": None if h["close"] == c[-1] or y == c[-1] else (h["close"] > c[-1]) == (y > c[-1]),
            }
    return out

"""Reading bar tapes (CSV or Parquet) and turning them into a live-like feed.

A tape has a time column (timestamps, timestamp, ts, time, date or datetime), open,
high, low, close, and optionally volume, amount and symbol. `fan_out` derives N
distinct synthetic symbols from one tape; `interleave` orders the bars of all
symbols by time, bar by bar, the way a live feed delivers them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from kronos_rt.features import COLUMNS, PRICE_COLUMNS
from worker.errors import ConfigError

TIME_COLUMNS = ("timestamps", "timestamp", "ts", "time", "date", "datetime")


def read_tape(path: str | Path, symbol: str | None = None) -> pd.DataFrame:
    """Tape -> DataFrame with columns symbol, time (datetime64), open..close, volume, amount
    (NaN where the tape has no such column). `symbol` names a tape without a symbol column
    (and overrides none that exist)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable CSV tape ({type(exc).__name__}: {str(exc).strip()[:200]})") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    time_col = next((c for c in TIME_COLUMNS if c in df.columns), None)
    if time_col is None:
        raise ConfigError(f"{path}: no time column (one of {', '.join(TIME_COLUMNS)}); "
                          f"it has {', '.join(map(str, df.columns))}")
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing columns {', '.join(missing)} (a tape needs a time column, "
                          f"open, high, low, close; optional volume, amount, symbol)")
    out = pd.DataFrame({"time": pd.to_datetime(df[time_col])})
    if "symbol" in df.columns:
        out["symbol"] = df["symbol"].astype(str)
    elif symbol:
        out["symbol"] = symbol
    else:
        raise ConfigError(f"{path}: no symbol column; pass one with --symbol")
    for c in PRICE_COLUMNS:
        out[c] = df[c].astype(float)
    for c in ("volume", "amount"):
        out[c] = df[c].astype(float) if c in df.columns else np.nan
    return out.sort_values(["symbol", "time"], kind="stable").reset_index(drop=True)


def fanout_symbols(base: str, n: int) -> list[str]:
    return [f"{base}-{i:04d}" for i in range(1, n + 1)]


def fan_out(tape: pd.DataFrame, n: int, base: str | None = None) -> pd.DataFrame:
    """N synthetic symbols from a one-symbol tape. Symbol i's prices are the tape's times a
    per-symbol factor and a small deterministic per-bar perturbation (the same for all four
    prices of a bar, so high >= open/close >= low still holds); volume is scaled too and
    amount follows price x volume. Each symbol therefore differs, reproducibly."""
    if n <= 1 and base is None:
        return tape
    symbols = tape["symbol"].unique()
    if len(symbols) != 1:
        raise ValueError("fan-out needs a tape of exactly one symbol")
    base = base or "SYM"
    frames = []
    for i, name in enumerate(fanout_symbols(base, n), start=1):
        rng = np.random.default_rng(i)
        price_factor = 0.5 + 1.5 * rng.random()
        volume_factor = 0.5 + rng.random()
        # Drawn last, so bar k's perturbation does not depend on the tape's length.
        wiggle = 1.0 + 0.002 * rng.standard_normal(len(tape))
        f = tape.copy()
        f["symbol"] = name
        for c in PRICE_COLUMNS:
            f[c] = (tape[c].to_numpy() * price_factor * wiggle).round(4)
        f["volume"] = (tape["volume"].to_numpy() * volume_factor).round(0)
        f["amount"] = (tape["amount"].to_numpy() * volume_factor * price_factor * wiggle).round(2)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def interleave(tape: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by time, then by symbol: one bar of every symbol before the next bar of any."""
    return tape.sort_values(["time", "symbol"], kind="stable").reset_index(drop=True)


def bar_events(tape: pd.DataFrame) -> Iterator[tuple[str, dict, pd.Timestamp]]:
    """(symbol, bar.v1 dict, time) per row, in the tape's order."""
    cols = {c: tape[c].to_numpy() for c in COLUMNS}
    times = tape["time"]
    symbols = tape["symbol"].to_numpy()
    for i in range(len(tape)):
        t = times.iloc[i]
        bar = {"symbol": symbols[i], "ts": t.strftime("%Y-%m-%dT%H:%M:%S")}
        for c in PRICE_COLUMNS:
            bar[c] = float(cols[c][i])
        for c in ("volume", "amount"):
            v = float(cols[c][i])
            bar[c] = None if np.isnan(v) else v
        yield symbols[i], bar, t


async def tape_from_topic(brokers: str, topic: str, security=None, timeout_s: float = 120.0):
    """A bar topic as a tape (symbol, timestamps, open..amount), read group-less up to the
    high-watermarks seen at the start. Messages that are not valid bars are counted, not
    kept; a bar sent again (same symbol and time) keeps its latest value, as a window does.
    Returns (DataFrame, {"messages", "invalid", "offsets": {partition: [first, last]}})."""
    from worker.contracts import events
    from worker.adapters.kafka import read_topic

    rows: dict[tuple[str, str], list] = {}
    stats = {"messages": 0, "invalid": 0, "offsets": {}}
    async for msg in read_topic(brokers, topic, timeout_s=timeout_s, client_id="kronos-rt-tape", security=security):
        stats["messages"] += 1
        span = stats["offsets"].setdefault(msg.partition, [msg.offset, msg.offset])
        span[1] = msg.offset
        try:
            bar = events.parse_bar(msg.value, msg.key)
        except events.InvalidEvent:
            stats["invalid"] += 1
            continue
        rows[(bar.symbol, bar.time.isoformat())] = [bar.symbol, bar.time, *bar.values()]
    df = pd.DataFrame(list(rows.values()), columns=["symbol", "timestamps", *COLUMNS])
    return df.sort_values(["symbol", "timestamps"], kind="stable").reset_index(drop=True), stats

"""Training and evaluation data from bar tapes (docs/MODEL.md, "Training", "Data windows").

A tape is a CSV or Parquet file with a time column, open, high, low, close and
optionally volume, amount and symbol (one symbol per file, or a symbol column). Tapes
become `Series` (one per symbol, rows in time order); a split (train / val / test) is a
time interval; a window is lookback + horizon consecutive rows of one series lying wholly
inside one split, normalized with the statistics of its lookback rows only.

Rows that cannot be used (NaN or infinite prices, high < low, non-positive prices) are
an error by default, naming how many and the first few; with drop_bad_rows they are
dropped and reported instead, never kept silently. Gaps between sessions are allowed:
a window is consecutive rows, whatever time lies between them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..features import COLUMNS, PRICE_COLUMNS, fill_missing, normalize, time_features
from ..registry import file_sha256

TIME_COLUMNS = ("timestamps", "timestamp", "ts", "time", "date", "datetime")
TAPE_SUFFIXES = (".csv", ".parquet", ".pq")
CLIP = 5.0


class DataError(ValueError):
    """Input data that cannot be used; the message says what and where, in one line."""


@dataclass
class Series:
    symbol: str
    source: str  # file it came from
    times: np.ndarray  # datetime64[ns] [N], strictly increasing
    bars: np.ndarray  # float64 [N, 6] open, high, low, close, volume, amount (missing filled)

    def __len__(self) -> int:
        return len(self.times)

    @cached_property
    def stamps(self) -> np.ndarray:
        """int64 [N, 5] time features of every row, computed once for all the splits' windows."""
        return time_features(self.times)


@dataclass
class TapeFile:
    path: str
    sha256: str
    rows: int
    symbols: list[str]
    start: str
    end: str
    bad_rows: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TapeSet:
    series: list[Series]
    files: list[TapeFile]
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)

    @property
    def start(self) -> np.datetime64:
        return min(s.times[0] for s in self.series)

    @property
    def end(self) -> np.datetime64:
        return max(s.times[-1] for s in self.series)


def _iso(t) -> str:
    return str(np.datetime64(t, "s")).replace("T", " ")


def tape_files(paths) -> list[Path]:
    """Files named, and the tapes (CSV/Parquet) inside folders named, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in TAPE_SUFFIXES and f.is_file())
            if not found:
                raise DataError(f"{p}: folder holds no .csv or .parquet tapes")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not out:
        raise DataError("no data files given")
    return out


def _read_frame(path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except Exception as exc:  # unreadable, not a CSV, parquet engine missing
        raise DataError(f"{path}: cannot read it as a tape ({type(exc).__name__}: {exc})") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def _bad_mask(bars: np.ndarray) -> np.ndarray:
    prices = bars[:, :4]
    with np.errstate(invalid="ignore"):
        return (~np.isfinite(prices).all(1) | (prices <= 0).any(1) | (bars[:, 1] < bars[:, 2])
                | ~np.isfinite(bars[:, 4:]).all(1) | (bars[:, 4:] < 0).any(1))


def load_tapes(paths, drop_bad_rows: bool = False, max_examples: int = 3) -> TapeSet:
    """Read tapes into series. Raises DataError (one line) on missing columns, unparsable
    or non-increasing timestamps within a symbol, and bad rows unless drop_bad_rows."""
    import pandas as pd

    series: list[Series] = []
    files: list[TapeFile] = []
    bad_total, examples = 0, []
    for path in tape_files(paths):
        df = _read_frame(path)
        time_col = next((c for c in TIME_COLUMNS if c in df.columns), None)
        if time_col is None:
            raise DataError(f"{path}: no time column (one of {', '.join(TIME_COLUMNS)})")
        missing = [c for c in PRICE_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing columns {', '.join(missing)} (need open, high, low, close)")
        if len(df) == 0:
            raise DataError(f"{path}: no rows")
        try:
            times = pd.to_datetime(df[time_col]).to_numpy(dtype="datetime64[ns]")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: column {time_col!r} has values that are not timestamps ({exc})") from exc
        if np.isnat(times).any():
            row = int(np.flatnonzero(np.isnat(times))[0])
            raise DataError(f"{path}: empty timestamp at data row {row}")
        cols = []
        for c in COLUMNS:
            if c in df.columns:
                cols.append(pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64))
            else:
                cols.append(np.full(len(df), np.nan))
        raw = np.stack(cols, axis=1)  # a missing column is NaN: fill_missing fills it as the reference does
        bars = fill_missing(raw)
        symbols = df["symbol"].astype(str).to_numpy() if "symbol" in df.columns else np.full(len(df), path.stem)

        bad = _bad_mask(bars)
        # A volume/amount column the tape has but a row leaves empty is a bad row, not a
        # "missing column" to fill: filling it would invent data.
        for j, c in ((4, "volume"), (5, "amount")):
            if c in df.columns:
                bad |= np.isnan(raw[:, j])
        n_bad = int(bad.sum())
        if n_bad:
            bad_total += n_bad
            for row in np.flatnonzero(bad)[: max_examples - len(examples)]:
                examples.append(f"{path.name} row {int(row)} ({_iso(times[row])}): "
                                + ", ".join(f"{c}={raw[row, j]:g}" for j, c in enumerate(COLUMNS)))
            if not drop_bad_rows:
                first = np.flatnonzero(bad)[:max_examples]
                raise DataError(f"{path}: {n_bad} bad rows (NaN/inf/non-positive prices, high < low or negative "
                                f"volume), first at data rows {', '.join(map(str, first.tolist()))}; "
                                "fix the tape or pass --drop-bad-rows")
        keep = ~bad
        file_symbols = []
        for sym in dict.fromkeys(symbols[keep].tolist()):
            sel = keep & (symbols == sym)
            t, b = times[sel], bars[sel]
            steps = np.diff(t.astype(np.int64))
            if (steps <= 0).any():
                i = int(np.flatnonzero(steps <= 0)[0])
                raise DataError(f"{path}: timestamps of {sym} are not strictly increasing at {_iso(t[i + 1])} "
                                f"(after {_iso(t[i])}); sort the tape and remove duplicates")
            series.append(Series(sym, str(path), t, b))
            file_symbols.append(sym)
        if not file_symbols:
            raise DataError(f"{path}: no usable rows")
        ft = times[keep]
        files.append(TapeFile(str(path), file_sha256(path), int(len(df)), file_symbols, _iso(ft.min()), _iso(ft.max()),
                              n_bad))
    return TapeSet(series, files, bad_total, examples)


# -- splits ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """[start, end) in time; None = open on that side."""
    start: np.datetime64 | None
    end: np.datetime64 | None

    def mask(self, times: np.ndarray) -> np.ndarray:
        m = np.ones(len(times), bool)
        if self.start is not None:
            m &= times >= self.start
        if self.end is not None:
            m &= times < self.end
        return m

    def describe(self) -> str:
        return f"[{'-inf' if self.start is None else _iso(self.start)}, {'+inf' if self.end is None else _iso(self.end)})"


def _parse_bound(text: str, what: str):
    """'' -> None, a number in [0, 1] -> float fraction, else a timestamp."""
    text = text.strip()
    if not text:
        return None
    try:
        f = float(text)
    except ValueError:
        try:
            return np.datetime64(__import__("pandas").Timestamp(text).to_datetime64(), "ns")
        except (ValueError, TypeError):
            raise DataError(f"{what}: {text!r} is neither a fraction in [0, 1] nor a date") from None
    if not 0.0 <= f <= 1.0 or math.isnan(f):
        raise DataError(f"{what}: fraction {text!r} is outside [0, 1]")
    return f


def parse_range(spec: str, what: str, start: np.datetime64, end: np.datetime64) -> Interval:
    """'A:B' with A, B fractions of the data's time span (0.8:0.9) or dates
    (2024-07-01:2024-08-01); either side may be empty. Fractions map to times between the
    first and the last bar of all series."""
    if spec is None or ":" not in spec:
        raise DataError(f"{what}: expected START:END (fractions like 0.8:0.9 or dates), got {spec!r}")
    a, b = spec.split(":", 1) if spec.count(":") == 1 else _split_dates(spec, what)
    span = end.astype("datetime64[ns]").astype(np.int64) - start.astype("datetime64[ns]").astype(np.int64)

    def to_time(v, is_end):
        if isinstance(v, float):
            if is_end and v >= 1.0:
                return None  # up to and including the last bar
            return np.datetime64(int(start.astype("datetime64[ns]").astype(np.int64) + round(v * span)), "ns")
        return v

    lo, hi = to_time(_parse_bound(a, what), False), to_time(_parse_bound(b, what), True)
    if lo is not None and hi is not None and hi <= lo:
        raise DataError(f"{what}: range {spec!r} is empty (end is not after start)")
    return Interval(lo, hi)


def _split_dates(spec: str, what: str) -> tuple[str, str]:
    # Dates with times contain ':' themselves; accept 'A..B' or 'A/B' forms for those.
    for sep in ("..", "/"):
        if sep in spec:
            return tuple(spec.split(sep, 1))  # type: ignore[return-value]
    raise DataError(f"{what}: ambiguous range {spec!r}; with times of day write START..END")


def default_splits(tapes: TapeSet, train: str | None, val: str | None, test: str | None) -> dict[str, Interval]:
    """train/val/test intervals (defaults 0:0.7, 0.7:0.85, 0.85:1); they must not overlap."""
    start, end = tapes.start, tapes.end
    specs = {"train": train or "0:0.7", "val": val or "0.7:0.85", "test": test or "0.85:1"}
    out = {k: parse_range(v, f"--{k}", start, end) for k, v in specs.items()}
    ordered = sorted(out.items(), key=lambda kv: -np.inf if kv[1].start is None else kv[1].start.astype(np.int64))
    for (na, a), (nb, b) in zip(ordered, ordered[1:]):
        if a.end is None or (b.start is not None and b.start < a.end) or b.start is None:
            raise DataError(f"splits overlap: {na} {a.describe()} and {nb} {b.describe()}; "
                            "train, val and test must be disjoint in time")
    return out


# -- windows -----------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowRef:
    series: int
    start: int  # first row of the window in the series


def window_starts(series: Series, interval: Interval, length: int, stride: int = 1) -> np.ndarray:
    """Start rows of windows of `length` consecutive rows lying wholly inside `interval`."""
    inside = interval.mask(series.times).astype(np.int64)
    if len(inside) < length:
        return np.zeros(0, np.int64)
    # A window fits where all its rows are inside: a running count over `length` rows.
    counts = np.convolve(inside, np.ones(length, np.int64), mode="valid")
    return np.flatnonzero(counts == length)[::stride]


class WindowDataset(torch.utils.data.Dataset):
    """Windows of lookback + horizon rows inside one split, as the loss functions take them:
    {"x": float32 [T, 6] normalized with lookback statistics, "x_stamp": int64 [T, 5]}.
    The normalization is inference's (kronos_rt.features.normalize) with stats_rows=lookback:
    the lookback rows come out exactly as a forecast from them would see them.

    All start positions are listed; a shuffling sampler then draws windows at random
    positions inside the split, as the reference does."""

    def __init__(self, tapes: TapeSet, interval: Interval, lookback: int, horizon: int, split: str = "train",
                 stride: int = 1, clip: float = CLIP, max_windows: int | None = None):
        if lookback < 2 or horizon < 0:
            raise DataError(f"lookback must be >= 2 and horizon >= 0 (got {lookback}, {horizon})")
        self.series = tapes.series
        self.lookback, self.length, self.clip = lookback, lookback + horizon, clip
        refs = [(i, int(st)) for i, s in enumerate(self.series)
                for st in window_starts(s, interval, self.length, stride)]
        if not refs:
            rows = sum(int(interval.mask(s.times).sum()) for s in self.series)
            raise DataError(f"{split} split {interval.describe()} has {rows} bars, too few for one window of "
                            f"{self.length} consecutive bars (lookback {lookback} + horizon {horizon}); "
                            "widen the split or shorten the window")
        if max_windows is not None and len(refs) > max_windows:
            # Evenly spaced, so a capped validation set still spans the whole split.
            keep = np.linspace(0, len(refs) - 1, max_windows).round().astype(int)
            refs = [refs[k] for k in keep]
        self.refs = [WindowRef(i, st) for i, st in refs]

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        ref = self.refs[k]
        sl = slice(ref.start, ref.start + self.length)
        x, _, _ = normalize(self.series[ref.series].bars[sl], self.clip, stats_rows=self.lookback)
        return {"x": torch.from_numpy(np.ascontiguousarray(x)),
                "x_stamp": torch.from_numpy(self.series[ref.series].stamps[sl])}

    def time_range(self) -> tuple[str, str]:
        first = min(self.series[r.series].times[r.start] for r in self.refs)
        last = max(self.series[r.series].times[r.start + self.length - 1] for r in self.refs)
        return _iso(first), _iso(last)

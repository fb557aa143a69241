from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def make_tape(path, close, start="2024-01-02 09:30", freq="5min", symbol=None, **columns):
    """A tape with the given closes (open = previous close, high/low around them)."""
    close = np.asarray(close, float)
    open_ = np.concatenate([[close[0]], close[:-1]])
    df = pd.DataFrame({"timestamps": pd.date_range(start, periods=len(close), freq=freq), "open": open_,
                       "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
                       "close": close, "volume": 1000.0, "amount": 1000.0 * close})
    if symbol is not None:
        df.insert(1, "symbol", symbol)
    for k, v in columns.items():
        if v is None:
            df = df.drop(columns=[k])
        else:
            df[k] = v
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def tape(tmp_path):
    rng = np.random.default_rng(0)
    return make_tape(tmp_path / "walk.csv", 100 * np.exp(np.cumsum(rng.normal(0, 0.002, 400))))

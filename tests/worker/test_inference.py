"""Worker._compute: windows of mixed lengths are forecast exactly as each alone."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kronos_rt import Engine, Kronos, KronosTokenizer, SamplingParams
from worker.app import Worker
from worker.config import ModelRef, Settings

from ..kronos_rt.conftest import PARITY, TAPE


@pytest.fixture(scope="module")
def worker():
    engine = Engine(Kronos.from_pretrained(PARITY / "model"), KronosTokenizer.from_pretrained(PARITY / "tokenizer"),
                    device="cpu", max_context=128)
    s = Settings(lookback=64, min_history=32, pred_len=3, max_context=128, top_k=1, metrics_port=0, worker_id="t")
    w = Worker(s, engine=engine, model_ref=ModelRef("parity", "parity", "1"))
    w._sampling = SamplingParams(top_k=1)  # set by run(), which this test does not start
    return w


def _item(tape, start, n, pred_len=3):
    rows = tape.iloc[start:start + n]
    times = rows["timestamps"].to_numpy().astype("datetime64[s]")
    horizon = [t.to_pydatetime() for t in tape["timestamps"].iloc[start + n:start + n + pred_len]]
    return SimpleNamespace(values=rows[["open", "high", "low", "close", "volume", "amount"]].to_numpy(),
                           times=times, horizon=horizon)


def test_mixed_lengths_forecast_as_each_alone(worker):
    tape = pd.read_csv(TAPE, parse_dates=["timestamps"])
    items = [_item(tape, s, n) for s, n in ((0, 40), (300, 64), (700, 33), (900, 64), (1200, 40))]
    together = worker._compute(items)
    assert [ref for _, ref in together] == [worker.model_ref] * len(items)
    for it, (fc, _) in zip(items, together):
        (alone, _), = worker._compute([it])
        np.testing.assert_array_equal(fc.mean, alone.mean)

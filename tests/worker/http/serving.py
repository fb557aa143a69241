"""Helpers of the HTTP tests: an API served by uvicorn on a free port over the parity checkpoint
(greedy), bars from the tape; the fixtures conftest.py takes from here."""
from __future__ import annotations

import contextlib
import dataclasses

import httpx
import pandas as pd
import pytest

from worker.config import Settings
from worker.http.server import Standalone
from worker.pipeline.inference import build_engine

from tests.kronos_rt.conftest import PARITY, TAPE

COLUMNS = ["open", "high", "low", "close", "volume", "amount"]
BASE = Settings(model=str(PARITY / "model"), tokenizer=str(PARITY / "tokenizer"), device="cpu", dtype="float32",
                max_context=128, lookback=64, min_history=8, pred_len=4, temperature=1.0, top_k=1, top_p=1.0,
                sample_count=1, max_batch=64, max_wait_ms=20, http_port=0, worker_id="http-test",
                http_max_bars=200, http_max_pred_len=32, http_max_series=8)
_ENGINE = {}


def engine():
    if "e" not in _ENGINE:
        _ENGINE["e"] = build_engine(BASE)
    return _ENGINE["e"]


@pytest.fixture(scope="session")
def tape_rows() -> pd.DataFrame:
    return pd.read_csv(TAPE, parse_dates=["timestamps"])


def bars_of(rows: pd.DataFrame, columns=COLUMNS) -> list[dict]:
    return [{"ts": t.strftime("%Y-%m-%dT%H:%M:%S"), **{c: float(r[c]) for c in columns}}
            for t, (_, r) in zip(rows["timestamps"], rows.iterrows())]


@contextlib.asynccontextmanager
async def serving(**over):
    """(Standalone, httpx.AsyncClient) on a fresh API with BASE settings changed by `over`."""
    eng, ref = engine()
    async with Standalone(dataclasses.replace(BASE, **over), eng, ref) as api:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=30) as client:
            yield api, client


def values(doc: dict):
    import numpy as np

    return np.array([[h[c] for c in COLUMNS] for h in doc["horizon"]])

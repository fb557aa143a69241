"""Helpers for tests that run a worker end to end on the real broker and Redis: topic names,
settings around the parity checkpoint, a running Worker, reading a topic, and the forecasts
a run owes (checked against KronosPredictor on the same windows)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aiokafka import AIOKafkaConsumer

from kronos_rt.features import COLUMNS as FEATURE_COLUMNS
from worker.app.worker import Worker
from worker.config import Settings
from worker.pipeline.inference import build_engine
from worker.tools import TAPE  # noqa: F401 - the tape these tests replay


ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "parity" / "model"
TOKENIZER = ROOT / "tests" / "fixtures" / "parity" / "tokenizer"
COLUMNS = list(FEATURE_COLUMNS)
LOOKBACK, MIN_HISTORY, PRED_LEN, MAX_CONTEXT = 64, 32, 4, 128


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from intra-op threads, and on a loaded 2-core box they
    oversubscribe it (x50 slower). Restored afterwards for the rest of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def names(tag: str) -> dict:
    u = uuid.uuid4().hex[:8]
    return {"bars_topic": f"bars-{tag}-{u}", "forecasts_topic": f"fc-{tag}-{u}",
            "dlq_topic": f"dlq-{tag}-{u}", "group": f"g-{tag}-{u}"}


def make_settings(broker: str, redis_url: str, prefix: str, topics: dict, **over) -> Settings:
    base = dict(
        brokers=broker, redis=redis_url, redis_prefix=prefix, model=str(MODEL), tokenizer=str(TOKENIZER),
        lookback=LOOKBACK, min_history=MIN_HISTORY, pred_len=PRED_LEN, max_context=MAX_CONTEXT,
        temperature=1.0, top_k=1, top_p=1.0, sample_count=1, device="cpu", dtype="float32",
        metrics_port=0, max_batch=32, max_wait_ms=5, session_timeout_ms=3000, drain_timeout_s=10,
        worker_id=f"w-{uuid.uuid4().hex[:6]}",
    )
    base.update(topics)
    base.update(over)
    return Settings(**base)


_ENGINE = {}


def engine():
    """One CPU engine for the whole test session (the parity checkpoint is tiny)."""
    if "e" not in _ENGINE:
        s = Settings(model=str(MODEL), tokenizer=str(TOKENIZER), device="cpu", dtype="float32",
                     max_context=MAX_CONTEXT, lookback=LOOKBACK, min_history=MIN_HISTORY)
        _ENGINE["e"] = build_engine(s)
    return _ENGINE["e"]


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, before_run=None):
    eng, ref = engine()
    worker = Worker(settings, engine=eng, model_ref=ref)
    if before_run is not None:
        before_run(worker)
    task = asyncio.create_task(worker.run())
    try:
        # Up when it has partitions (or failed trying).
        await asyncio.wait_for(worker.ready(), 15)
        if task.done():
            task.result()
        yield worker
    finally:
        worker.stop()
        clean = await asyncio.wait_for(task, 60)
        assert clean, "worker did not drain cleanly"


async def consume(broker: str, topic: str, until, timeout: float = 60.0) -> list:
    """Messages of `topic` from the beginning until `until(messages)` holds (or timeout)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not until(got) and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    return got


def forecasts_of(msgs) -> list[dict]:
    return [json.loads(m.value) for m in msgs]


def expected_keys(rows: pd.DataFrame) -> set[tuple[str, str]]:
    """(symbol, ts) of every bar from the min_history-th of its symbol on."""
    n = rows.groupby("symbol").cumcount()
    keep = rows[n >= MIN_HISTORY - 1]
    return {(s, t.strftime("%Y-%m-%dT%H:%M:%S")) for s, t in zip(keep["symbol"], keep["time"])}


class Offline:
    """KronosPredictor on the window a forecast claims to have used."""

    def __init__(self, rows: pd.DataFrame):
        from kronos_rt import KronosPredictor

        eng, _ = engine()
        self.predictor = KronosPredictor(eng.model, eng.tokenizer, device="cpu", max_context=MAX_CONTEXT)
        self.series = {s: g.reset_index(drop=True) for s, g in rows.groupby("symbol")}

    def expected(self, fc: dict) -> np.ndarray:
        g = self.series[fc["symbol"]]
        i = int(np.flatnonzero(g["time"] == pd.Timestamp(fc["as_of"]))[0])
        window = g.iloc[max(0, i + 1 - LOOKBACK): i + 1]
        y_ts = pd.Series(pd.to_datetime([h["ts"] for h in fc["horizon"]]))
        out = self.predictor.predict(window[COLUMNS], window["time"].reset_index(drop=True), y_ts, PRED_LEN,
                                     T=1.0, top_k=1, top_p=1.0, sample_count=1, verbose=False)
        return out[COLUMNS].to_numpy()

    def check(self, fc: dict) -> None:
        got = np.array([[h[c] for c in COLUMNS] for h in fc["horizon"]])
        np.testing.assert_allclose(got, self.expected(fc), rtol=1e-4, atol=1e-2)


def forecast_schema():
    return json.loads((ROOT / "schemas" / "forecast.v1.json").read_text())

"""HttpForecastClient: typed answers from DataFrames or dicts, errors with the field, retry on overload."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from kronos_rt_client.http_client import HttpForecastClient, HttpForecastError

from tests.worker.http.serving import COLUMNS, bars_of, serving, values


async def test_forecast_from_a_dataframe_matches_the_raw_answer(tape_rows):
    ctx = tape_rows.iloc[500:548]
    async with serving() as (api, http):
        raw = (await http.post("/v1/forecast", json={"symbol": "600000.SH", "bars": bars_of(ctx), "pred_len": 5})).json()
        async with HttpForecastClient(f"http://127.0.0.1:{api.port}") as client:
            fc = await client.forecast(ctx, pred_len=5, symbol="600000.SH")
            many = await client.forecast_many([{"bars": ctx, "pred_len": 5, "symbol": "600000.SH"},
                                               {"bars": bars_of(ctx.iloc[:40]), "pred_len": 2}])
            with pytest.raises(HttpForecastError) as bad:
                await client.forecast(bars_of(ctx)[::-1], pred_len=5)
            info = await client.models()
    assert fc.symbol == "600000.SH" and len(fc.horizon) == 5 and fc.source_topic == "http"
    got = np.array([[getattr(h, c) for c in COLUMNS] for h in fc.horizon])
    np.testing.assert_array_equal(got, values(raw))
    assert [len(f.horizon) for f in many] == [5, 2]
    assert bad.value.status == 422 and bad.value.field == "bars[1].ts"
    assert info["model"]["name"] == "model"


async def test_client_waits_out_an_overload_as_told(tape_rows):
    gate = threading.Event()
    async with serving(http_max_queue=1, max_batch=1, max_wait_ms=0) as (api, http):
        blocked = api.batcher.run_in_thread(gate.wait, 10)
        async with HttpForecastClient(f"http://127.0.0.1:{api.port}", retries=0) as impatient, \
                HttpForecastClient(f"http://127.0.0.1:{api.port}", retries=3) as patient:
            body = bars_of(tape_rows.iloc[0:40])
            import asyncio

            first = asyncio.create_task(patient.forecast(body, pred_len=2))
            while api.batcher.low_pending < 1:
                await asyncio.sleep(0.01)
            second = asyncio.create_task(patient.forecast(body, pred_len=2))
            while api.batcher.low_queued < 1:
                await asyncio.sleep(0.01)
            with pytest.raises(HttpForecastError) as full:
                await impatient.forecast(body, pred_len=2)
            third = asyncio.create_task(patient.forecast(body, pred_len=2))  # 429, waits Retry-After, retries
            await asyncio.sleep(0.2)
            gate.set()
            await blocked
            results = await asyncio.gather(first, second, third)
    assert full.value.status == 429 and full.value.retry_after >= 1
    assert all(len(r.horizon) == 2 for r in results)

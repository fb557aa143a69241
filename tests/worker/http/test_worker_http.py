"""`kronos-rt worker --http-port`: the API mounted in the worker shares its engine and its
inference thread, and the stream's forecasts stay complete and exact while HTTP requests
keep arriving; stream batches never wait behind HTTP ones."""
from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import numpy as np
import pytest

from worker.adapters.kafka import ensure_topics

from tests.worker.http.serving import bars_of, values
from tests.worker.streams import Offline, consume, expected_keys, forecasts_of, make_settings, names, running_worker
from worker.tools import TAPE
from worker.tools.replay import prepare, replay

pytestmark = pytest.mark.slow


async def test_stream_stays_exact_while_http_requests_share_the_engine(broker, redis_url, redis_prefix, tape_rows):
    topics = names("http")
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=3, limit=90)
    want = expected_keys(rows)
    settings = make_settings(broker, redis_url, redis_prefix, topics, http_port=0, http_max_queue=64)
    kinds: list[str] = []

    def record(worker):  # what each engine batch held, in order: stream windows or HTTP jobs
        worker.observe_batches(lambda items, s: kinds.append(
            "http" if all(hasattr(it, "sampling") for it in items) else
            "stream" if not any(hasattr(it, "sampling") for it in items) else "mixed"))

    bodies = [{"symbol": f"H{i}", "bars": bars_of(tape_rows.iloc[i * 10: i * 10 + 48]), "pred_len": 4}
              for i in range(8)]
    async with running_worker(settings, before_run=record) as worker:
        assert worker.http_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}", timeout=60) as http:
            alone = [await http.post("/v1/forecast", json=b) for b in bodies]
            stop = asyncio.Event()
            answers: list[httpx.Response] = []

            async def hammer(i):
                while not stop.is_set():
                    answers.append(await http.post("/v1/forecast", json=bodies[i % len(bodies)]))

            clients = [asyncio.create_task(hammer(i)) for i in range(4)]
            await replay(rows, broker, topics["bars_topic"])
            msgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))
            stop.set()
            await asyncio.gather(*clients)
            metrics = (await http.get("/metrics")).text

    fcs = forecasts_of(msgs)
    counts = Counter((f["symbol"], f["as_of"]) for f in fcs)
    assert set(counts) == want and max(counts.values()) == 1
    offline = Offline(rows)
    for fc in fcs:
        offline.check(fc)
    assert answers and all(r.status_code == 200 for r in answers)
    for r in answers:  # same bars, same answer, whatever ran beside it
        i = int(r.json()["symbol"][1:])
        np.testing.assert_array_equal(values(r.json()), values(alone[i].json()))
    assert "mixed" not in kinds and "http" in kinds and "stream" in kinds
    assert "kronos_rt_http_requests_total" in metrics and "kronos_rt_forecasts_total" in metrics

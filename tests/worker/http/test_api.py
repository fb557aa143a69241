"""The HTTP API against uvicorn on a free port: answers equal the library's, concurrent
requests are batched without changing any answer, bad input gets a 4xx naming the field,
auth, overload and recovery, and a client that goes away frees its slot."""
from __future__ import annotations

import asyncio
import threading

import httpx
import jsonschema
import numpy as np
import pandas as pd
import pytest

from kronos_rt import KronosPredictor

from tests.kronos_rt.conftest import ROOT
from tests.worker.http.serving import BASE, COLUMNS, bars_of, engine, serving, values


@pytest.fixture(scope="module")
def predictor():
    eng, _ = engine()
    return KronosPredictor(eng.model, eng.tokenizer, device="cpu", max_context=BASE.max_context)


def _expected(predictor, ctx: pd.DataFrame, fut: pd.Series, columns=COLUMNS) -> np.ndarray:
    out = predictor.predict(ctx[columns].reset_index(drop=True), ctx["timestamps"].reset_index(drop=True),
                            fut.reset_index(drop=True), len(fut), T=1.0, top_k=1, top_p=1.0, sample_count=1)
    return out[COLUMNS].to_numpy()


@pytest.mark.parametrize("columns", [COLUMNS, ["open", "high", "low", "close"], COLUMNS[:5]],
                         ids=["all", "no-volume-amount", "no-amount"])
async def test_greedy_forecast_equals_the_library_predictor(tape_rows, predictor, columns):
    ctx, fut = tape_rows.iloc[200:260], tape_rows["timestamps"].iloc[260:266]
    future_ts = [t.strftime("%Y-%m-%dT%H:%M:%S") for t in fut]
    async with serving() as (api, http):
        r = await http.post("/v1/forecast", json={"symbol": "600000.SH", "bars": bars_of(ctx, columns),
                                                  "future_ts": future_ts})
        derived = await http.post("/v1/forecast", json={"symbol": "600000.SH", "bars": bars_of(ctx, columns),
                                                        "pred_len": 6})
    assert r.status_code == 200, r.text
    doc = r.json()
    np.testing.assert_allclose(values(doc), _expected(predictor, ctx, fut, columns), rtol=1e-4, atol=1e-2)
    assert [h["ts"] for h in doc["horizon"]] == future_ts
    assert doc["as_of"] == ctx["timestamps"].iloc[-1].strftime("%Y-%m-%dT%H:%M:%S")
    assert doc["sampling"]["lookback"] == 60 and doc["sampling"]["pred_len"] == 6
    jsonschema.validate(doc, __import__("json").loads((ROOT / "schemas" / "forecast.v1.json").read_text()))
    # future_ts left out: the next bar times from --interval (continuous calendar here).
    steps = [h["ts"] for h in derived.json()["horizon"]]
    assert steps == [(ctx["timestamps"].iloc[-1] + pd.Timedelta(minutes=5 * k)).strftime("%Y-%m-%dT%H:%M:%S")
                     for k in range(1, 7)]


async def test_session_calendar_and_request_sampling(tape_rows):
    ctx = tape_rows.iloc[0:40]
    last = ctx["timestamps"].iloc[-1]
    async with serving(sessions="*.SH=ashare") as (api, http):
        doc = (await http.post("/v1/forecast", json={"symbol": "600000.SH", "bars": bars_of(ctx), "pred_len": 30,
                                                     "sampling": {"top_k": 0, "top_p": 0.9, "sample_count": 4},
                                                     "quantiles": [0.9, 0.1]})).json()
    want = api.http.service.calendar_for("600000.SH").next_times(last.to_pydatetime(), BASE.interval_td, 30)
    assert [h["ts"] for h in doc["horizon"]] == [t.strftime("%Y-%m-%dT%H:%M:%S") for t in want]
    assert doc["quantile_levels"] == [0.1, 0.9] and doc["sampling"]["sample_count"] == 4
    assert all(len(h["quantiles"]["close"]) == 2 for h in doc["horizon"])


@pytest.mark.parametrize("symbol, last, first_steps", [
    ("600000.SH", "2024-02-08 15:00", ["2024-02-19T09:35:00", "2024-02-19T09:40:00"]),  # Spring Festival eve
    ("AAPL", "2024-11-29 12:55", ["2024-11-29T13:00:00", "2024-12-02T09:35:00"]),       # early close
])
async def test_default_horizon_follows_the_exchange_calendar_and_so_do_the_values(tape_rows, predictor, symbol,
                                                                                   last, first_steps):
    from worker.calendars.sessions import calendar

    code = "XSHG" if symbol.endswith(".SH") else "XNYS"
    ctx = tape_rows.iloc[0:40].copy()
    # The tape's bars, restamped to end at `last` on the exchange's own bar times.
    end = pd.Timestamp(last).to_pydatetime()
    start = end - pd.Timedelta(days=20).to_pytimedelta()
    times = [t for t in [start] + calendar(code).next_times(start, BASE.interval_td, 2000) if t <= end][-40:]
    assert times[-1] == end
    ctx["timestamps"] = pd.to_datetime(times)
    async with serving(sessions="*.SH=XSHG,*=XNYS") as (api, http):
        r = await http.post("/v1/forecast", json={"symbol": symbol, "bars": bars_of(ctx), "pred_len": 6})
    assert r.status_code == 200, r.text
    steps = [h["ts"] for h in r.json()["horizon"]]
    assert steps[:2] == first_steps
    fut = pd.Series(pd.to_datetime(steps))
    np.testing.assert_allclose(values(r.json()), _expected(predictor, ctx, fut), rtol=1e-4, atol=1e-2)


async def test_64_concurrent_requests_are_batched_and_each_equals_its_answer_alone(tape_rows):
    # Three window lengths and two horizon lengths: grouped apart inside a batch.
    reqs = [{"symbol": f"S{i}", "bars": bars_of(tape_rows.iloc[i * 20: i * 20 + (40, 48, 56)[i % 3]]),
             "pred_len": (3, 5)[i % 2]} for i in range(64)]
    async with serving(max_wait_ms=100) as (api, http):
        together = await asyncio.gather(*(http.post("/v1/forecast", json=r) for r in reqs))
        alone = [await http.post("/v1/forecast", json=r) for r in reqs[:16]]
        batch = await http.post("/v1/forecast:batch", json={"series": reqs[:8]})
        metrics = (await http.get("/metrics")).text
    assert all(r.status_code == 200 for r in together)
    sizes = [r.json()["batch_size"] for r in together]
    assert max(sizes) > 1
    for r, a in zip(together, alone):
        np.testing.assert_array_equal(values(r.json()), values(a.json()))
    for d, a in zip(batch.json()["forecasts"], together):
        np.testing.assert_array_equal(values(d), values(a.json()))
    assert 'kronos_rt_http_requests_total{route="/v1/forecast",status="200"} 80.0' in metrics
    assert "kronos_rt_http_batch_size_count" in metrics and "kronos_rt_http_queue_depth 0.0" in metrics


def _good(tape_rows):
    return {"symbol": "X", "bars": bars_of(tape_rows.iloc[300:340]), "pred_len": 3}


def _mutate(tape_rows, fn):
    body = _good(tape_rows)
    fn(body)
    return body


BAD = [  # (name, mutation of a good body, status, field)
    ("no bars", lambda b: b.update(bars=[]), 422, "bars"),
    ("too many bars", lambda b: b.update(bars=b["bars"] * 6), 422, "bars"),
    ("pred_len 0", lambda b: b.update(pred_len=0), 422, "pred_len"),
    ("pred_len too big", lambda b: b.update(pred_len=33), 422, "pred_len"),
    ("high < low", lambda b: b["bars"][3].update(high=1.0), 422, "bars[3].high"),
    ("low above close", lambda b: b["bars"][4].update(low=b["bars"][4]["high"] + 1), 422, "bars[4].high"),
    ("duplicate ts", lambda b: b["bars"][5].update(ts=b["bars"][4]["ts"]), 422, "bars[5].ts"),
    ("non-monotonic ts", lambda b: b["bars"][6].update(ts=b["bars"][2]["ts"]), 422, "bars[6].ts"),
    ("bad ts", lambda b: b["bars"][2].update(ts="yesterday"), 422, "bars[2].ts"),
    ("price as string", lambda b: b["bars"][0].update(close="11.2"), 422, "bars[0].close"),
    ("negative volume", lambda b: b["bars"][1].update(volume=-1.0), 422, "bars[1].volume"),
    ("missing close", lambda b: b["bars"][7].pop("close"), 422, "bars[7].close"),
    ("unknown field", lambda b: b.update(horizon=12), 422, "horizon"),
    ("unknown bar field", lambda b: b["bars"][0].update(vwap=1.0), 422, "bars[0].vwap"),
    ("future_ts length", lambda b: b.update(future_ts=["2030-01-01T00:00:00"]), 422, "future_ts"),
    ("future_ts in the past", lambda b: b.update(future_ts=["2001-01-01T00:00:00"] * 3), 422, "future_ts[0]"),
    ("top_p", lambda b: b.update(sampling={"top_p": 2}), 422, "sampling.top_p"),
    ("quantile", lambda b: b.update(quantiles=[0.5, 1.5]), 422, "quantiles[1]"),
    ("bad interval", lambda b: b.update(interval="soon"), 422, "interval"),
    ("bad symbol", lambda b: b.update(symbol="a b"), 422, "symbol"),
    # the stream's value policy: such bars would poison a window (events.parse_bar)
    ("non-positive prices", lambda b: b["bars"][2].update(open=-1.0, high=-1.0, low=-1.0, close=-1.0), 422,
     "bars[2].open"),
    ("price too large", lambda b: b["bars"][2].update(high=1e300), 422, "bars[2].high"),
    ("volume too large", lambda b: b["bars"][2].update(volume=1e300), 422, "bars[2].volume"),
]


async def test_every_bad_input_gets_its_4xx_naming_the_field_and_the_server_keeps_serving(tape_rows):
    async with serving() as (api, http):
        for name, fn, status, field in BAD:
            r = await http.post("/v1/forecast", json=_mutate(tape_rows, fn))
            assert r.status_code == status, (name, r.text)
            assert r.json()["error"]["field"] == field, (name, r.json())
        raw = httpx.Headers({"content-type": "application/json"})
        nan = (await http.post("/v1/forecast", headers=raw, content=b'{"bars": [{"ts": "2024-01-02T09:35:00", '
                               b'"open": NaN, "high": 1, "low": 1, "close": 1}]}'))
        inf = (await http.post("/v1/forecast", headers=raw, content=b'{"bars": [{"ts": "2024-01-02T09:35:00", '
                               b'"open": 1, "high": 1e999, "low": 1, "close": 1}]}'))
        assert (nan.status_code, nan.json()["error"]["field"]) == (422, "bars[0].open")
        assert (inf.status_code, inf.json()["error"]["field"]) == (422, "bars[0].high")
        garbage = await http.post("/v1/forecast", headers=raw, content=b"{not json")
        assert (garbage.status_code, garbage.json()["error"]["code"]) == (400, "bad_json")
        big = await http.post("/v1/forecast", headers=raw, content=b" " * (BASE.http_max_body_kb * 1024 + 1))
        assert (big.status_code, big.json()["error"]["field"]) == (413, "body")
        many = await http.post("/v1/forecast:batch", json={"series": [_good(tape_rows)] * 9})
        assert (many.status_code, many.json()["error"]["field"]) == (422, "series")
        nested = _good(tape_rows)
        nested["bars"][0]["high"] = 0.5
        one_bad = await http.post("/v1/forecast:batch", json={"series": [_good(tape_rows), nested]})
        assert (one_bad.status_code, one_bad.json()["error"]["field"]) == (422, "series[1].bars[0].high")
        assert (await http.post("/v1/forecast", json=_good(tape_rows))).status_code == 200
        assert api.batcher.low_pending == 0
    async with serving(http_strict=0) as (api, http):  # lenient: unknown fields ignored
        assert (await http.post("/v1/forecast", json=_mutate(tape_rows, BAD[12][1]))).status_code == 200


async def test_bearer_auth_on_and_off(tape_rows):
    body = _good(tape_rows)
    async with serving(api_token="s3cret") as (api, http):
        none = await http.post("/v1/forecast", json=body)
        wrong = await http.post("/v1/forecast", json=body, headers={"authorization": "Bearer s3cre"})
        right = await http.post("/v1/forecast", json=body, headers={"authorization": "Bearer s3cret"})
        models = await http.get("/v1/models")
        health = await http.get("/healthz")
    assert none.status_code == wrong.status_code == models.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200 and health.status_code == 200
    async with serving() as (api, http):
        assert (await http.post("/v1/forecast", json=body)).status_code == 200
        info = (await http.get("/v1/models")).json()
        assert info["model"]["name"] == "model" and info["limits"]["max_series"] == BASE.http_max_series
        assert "/v1/forecast" in (await http.get("/openapi.json")).json()["paths"]
        assert (await http.get("/docs")).status_code == 200
        # CORS is off unless origins are configured.
        pre = await http.options("/v1/forecast", headers={"origin": "https://x.example",
                                                          "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


async def _until(cond, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_overload_gives_429_then_503_with_retry_after_and_recovers(tape_rows):
    body = _good(tape_rows)
    gate = threading.Event()
    async with serving(http_max_queue=2, max_batch=1, max_wait_ms=0, http_timeout_s=3) as (api, http):
        blocked = api.batcher.run_in_thread(gate.wait, 10)  # the engine is busy
        # One request taken into a batch (waiting for the thread), two queued: the bound.
        waiting = []
        for _ in range(3):
            waiting.append(asyncio.create_task(http.post("/v1/forecast", json=body)))
            await _until(lambda: api.batcher.low_pending == len(waiting))
        full = await http.post("/v1/forecast", json=body)
        timed_out = await asyncio.gather(*waiting)
        gate.set()
        await blocked
        again = await http.post("/v1/forecast", json=body)
        metrics = (await http.get("/metrics")).text
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["code"] == "overloaded"
    assert [r.status_code for r in timed_out] == [503] * 3 and all("retry-after" in r.headers for r in timed_out)
    assert again.status_code == 200
    assert 'kronos_rt_http_rejected_total{reason="queue_full"} 1.0' in metrics
    assert 'kronos_rt_http_rejected_total{reason="timeout"} 3.0' in metrics


async def test_a_client_that_goes_away_frees_its_slot(tape_rows):
    body = _good(tape_rows)
    gate = threading.Event()
    async with serving(http_max_queue=1, max_batch=1, max_wait_ms=0) as (api, http):
        blocked = api.batcher.run_in_thread(gate.wait, 10)
        first = asyncio.create_task(http.post("/v1/forecast", json=body))  # taken into the stuck batch
        await _until(lambda: api.batcher.low_pending == 1)
        with pytest.raises(httpx.ReadTimeout):  # queued, then its client gives up
            await http.post("/v1/forecast", json=body, timeout=0.5)
        await _until(lambda: api.batcher.low_queued == 0)  # the server saw the disconnect: slot freed
        third = asyncio.create_task(http.post("/v1/forecast", json=body))  # the freed slot takes it
        await _until(lambda: api.batcher.low_queued == 1)
        gate.set()
        await blocked
        assert [(await first).status_code, (await third).status_code] == [200, 200]
        metrics = (await http.get("/metrics")).text
    assert 'kronos_rt_http_rejected_total{reason="client_gone"} 1.0' in metrics


async def test_an_engine_in_its_own_process_answers_the_same(tape_rows):
    """`kronos-rt serve --inference process`: the API over an EngineProcess answers as over the
    in-process engine, greedy and sampled (bands), bit for bit."""
    import dataclasses

    from kronos_rt.engine_process import EngineProcess
    from worker.http.server import Standalone
    from worker.pipeline.inference import build_engine

    ctx = tape_rows.iloc[100:160]
    bodies = [{"symbol": "600000.SH", "bars": bars_of(ctx), "pred_len": 3},
              {"symbol": "600000.SH", "bars": bars_of(ctx), "pred_len": 3,
               "sampling": {"top_k": 0, "top_p": 0.9, "sample_count": 4}, "quantiles": [0.1, 0.9]}]
    seeded = dataclasses.replace(BASE, seed=5)  # sampled answers repeat with a seed
    async with serving(seed=5) as (api, http):
        want = [(await http.post("/v1/forecast", json=b)).json() for b in bodies]
    child, ref = build_engine(dataclasses.replace(BASE, inference="process", engine_threads=1))
    try:
        assert isinstance(child, EngineProcess)
        async with Standalone(seeded, child, ref) as api:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=30) as http:
                got = [(await http.post("/v1/forecast", json=b)).json() for b in bodies]
    finally:
        child.close()
    for w, g in zip(want, got):
        assert g["horizon"] == w["horizon"]
    assert all(len(h["quantiles"]["close"]) == 2 for h in got[1]["horizon"])  # the sampled one's bands

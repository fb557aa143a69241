"""The view's HTTP side, served for real (uvicorn on a free port): the page, the JSON, the
event stream pushing what the store takes in, unknown symbols answered with a clear page."""
from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from worker.view.app import ViewServer
from worker.view.state import ViewState

from .messages import bar, epoch, forecast


@pytest.fixture
async def served():
    state = ViewState()
    for i in range(3):
        state.feed("bars", bar("AAA", i, 10.0 + i))
    state.feed("forecasts", forecast("AAA", 2, 12.0))
    server = ViewServer(state, None, port=0)
    url = await server.start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield state, client
    finally:
        await server.stop()


async def events(response, n: int) -> list[tuple[str, dict]]:
    """The next n events of an SSE response (comments and retry lines skipped)."""
    out, name = [], None
    if not hasattr(response, "sse_lines"):  # one line iterator per response, kept across calls
        response.sse_lines = response.aiter_lines()
    lines = response.sse_lines
    while len(out) < n:
        line = await asyncio.wait_for(lines.__anext__(), 10)
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            out.append((name, orjson.loads(line[len("data: "):])))
    return out


async def test_page_static_files_and_json(served):
    state, client = served
    page = await client.get("/")
    assert page.status_code == 200 and "lightweight-charts.standalone.production.js" in page.text
    assert (await client.get("/symbol/AAA")).status_code == 200
    js = await client.get("/static/vendor/lightweight-charts.standalone.production.js")
    assert js.status_code == 200 and "LightweightCharts" in js.text
    assert (await client.get("/static/vendor/LICENSE")).status_code == 200
    assert "EventSource" in (await client.get("/static/app.js")).text
    symbols = (await client.get("/api/symbols")).json()["symbols"]
    assert [s["symbol"] for s in symbols] == ["AAA"] and symbols[0]["as_of"] == epoch(2)
    snap = (await client.get("/api/symbols/AAA")).json()
    assert len(snap["bars"]) == 3 and len(snap["forecasts"]) == 1
    assert (await client.get("/api/stats")).json()["messages"] == {"bars": 3, "forecasts": 1}


@pytest.mark.parametrize("symbol", ["NOPE", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "a/b/c", "x" * 500])
async def test_unknown_symbol_gets_a_clear_page(served, symbol):
    _, client = served
    r = await client.get(f"/symbol/{symbol}")
    assert r.status_code == 404 and "Unknown symbol" in r.text and "<script>" not in r.text
    assert '<a href="/symbol/AAA">AAA</a>' in r.text  # what is known instead
    api = await client.get(f"/api/symbols/{symbol}")
    assert api.status_code == 404 and "unknown symbol" in api.json()["error"]


async def test_events_push_new_messages_of_the_chosen_symbol(served):
    state, client = served
    async with client.stream("GET", "/events", params={"symbol": "AAA"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        ((name, hello),) = await events(response, 1)
        assert name == "hello" and hello["symbol"] == "AAA"
        assert [s["symbol"] for s in hello["symbols"]] == ["AAA"] and len(hello["snapshot"]["bars"]) == 3
        state.feed("bars", bar("BBB", 1, 5.0))      # another symbol: its summary only
        state.feed("bars", bar("AAA", 3, 13.0))
        state.feed("forecasts", forecast("AAA", 3, 13.0))
        got = await events(response, 4)
        assert [n for n, _ in got] == ["summary", "bar", "forecast", "summary"]
        assert got[0][1]["symbol"] == "BBB" and got[1][1]["bar"][0] == epoch(3)
        assert got[2][1]["forecast"]["as_of"] == epoch(3) and got[3][1]["summary"]["as_of"] == epoch(3)
    await asyncio.sleep(0.2)
    assert not state.subscribers  # the closed page's queue is gone


async def test_events_for_an_unknown_or_invalid_symbol_send_summaries_only(served):
    state, client = served
    async with client.stream("GET", "/events", params={"symbol": "<bad>"}) as response:
        ((name, hello),) = await events(response, 1)
        assert hello["symbol"] is None and hello["snapshot"] is None
    async with client.stream("GET", "/events", params={"symbol": "LATER"}) as response:
        ((_, hello),) = await events(response, 1)
        assert hello["symbol"] == "LATER" and hello["snapshot"] is None
        state.feed("bars", bar("LATER", 1, 5.0))  # a symbol that shows up after the page opened
        got = await events(response, 2)
        assert [n for n, _ in got] == ["bar", "summary"]


async def test_a_page_that_falls_behind_gets_a_fresh_hello(served):
    state, client = served
    async with client.stream("GET", "/events", params={"symbol": "AAA"}) as response:
        await events(response, 1)
        (sub,) = state.subscribers
        sub.overflowed = True  # as if its queue had filled
        state.feed("bars", bar("AAA", 9, 10.0))
        ((name, hello),) = await events(response, 1)
        assert name == "hello" and hello["snapshot"]["bars"][-1][0] == epoch(9)


async def test_port_in_use_is_a_startup_error():
    from worker.errors import StartupError

    first = ViewServer(ViewState(), None, port=0)
    await first.start()
    try:
        with pytest.raises(StartupError, match="choose another --port"):
            await ViewServer(ViewState(), None, port=first.port).start()
    finally:
        await first.stop()

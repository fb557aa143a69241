"""The view's HTTP side (FastAPI): the page, its data and its live updates.

    GET /                       the page (the first symbol is shown)
    GET /symbol/{symbol}        the page for one symbol; 404 with a plain page when it is unknown
    GET /events?symbol=S        server-sent events: `hello` (every summary, S's snapshot and the
                                counters, also after a reconnect or an overflow), then `summary`,
                                `evicted`, `stats` and S's `bar`, `forecast` and `score` as they come
    GET /api/symbols            the symbol list (JSON), /api/symbols/{symbol} one snapshot, /api/stats
    GET /healthz                ok
    /static/...                 index.html, app.js, vendor/ (Lightweight Charts)

The page gets its updates pushed over the one event stream; it never polls. ViewServer runs
the app with uvicorn beside the Kafka feed (worker/view/feed.py) in the caller's event loop:
`kronos-rt view` and the demo both use it.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import time
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from worker.errors import StartupError
from worker.contracts.events import SYMBOL_RE
from worker.view.state import ViewState

STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE_S = 15.0   # an SSE comment this often keeps proxies from closing an idle stream
STATS_EVERY_S = 3.0  # the counters in the page's footer


def sse(event: str, data) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _unknown_page(symbol: str, state: ViewState) -> str:
    known = sorted(state.symbols)
    links = "".join(f'<li><a href="/symbol/{html.escape(s)}">{html.escape(s)}</a></li>' for s in known[:50])
    more = f"<p>... and {len(known) - 50} more on <a href=\"/\">the main page</a>.</p>" if len(known) > 50 else ""
    why = ("It is not a valid symbol name (letters, digits and . _ : - only, at most 64)."
           if not SYMBOL_RE.fullmatch(symbol) else
           "No bar, forecast or score of it has been read from the topics (yet), or it was dropped to "
           "keep to the symbol cap.")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>kronos-rt view: unknown symbol</title>"
            f"</head><body style=\"font-family: sans-serif; margin: 2em\"><h1>Unknown symbol</h1>"
            f"<p><code>{html.escape(symbol[:200])}</code>: {why}</p>"
            f"<p>{len(known)} symbols known. <a href=\"/\">Back to the live view</a>.</p>"
            f"<ul>{links}</ul>{more}</body></html>")


def create_app(state: ViewState, feed=None, title: str = "kronos-rt view") -> FastAPI:
    """The app over `state`; `feed` (worker.view.feed.Feed), when given, adds the topics read to /api/stats."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def stats() -> dict:
        out = state.stats_view()
        if feed is not None:
            out["topics"] = {t: {"kind": k, "partitions": feed.partitions.get(t)} for t, k in feed.kind_of.items()}
        return out

    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index():
        return page()

    @app.get("/symbol/{symbol:path}", include_in_schema=False)
    async def symbol_page(symbol: str):
        if symbol not in state.symbols:
            return HTMLResponse(_unknown_page(symbol, state), status_code=404)
        return page()

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.get("/api/stats")
    async def api_stats():
        return Response(orjson.dumps(stats()), media_type="application/json")

    @app.get("/api/symbols")
    async def api_symbols():
        return Response(orjson.dumps({"symbols": state.summaries()}), media_type="application/json")

    @app.get("/api/symbols/{symbol:path}")
    async def api_symbol(symbol: str):
        snap = state.snapshot(symbol)
        if snap is None:
            return JSONResponse({"error": f"unknown symbol {symbol[:200]!r}"}, status_code=404)
        return Response(orjson.dumps(snap), media_type="application/json")

    @app.get("/events")
    async def events(request: Request, symbol: str | None = None):
        if symbol is not None and not SYMBOL_RE.fullmatch(symbol):
            symbol = None  # nothing of it can arrive: summaries only

        def hello() -> bytes:
            # Taken in the same step as the subscription (one event loop): nothing falls between.
            return sse("hello", {"symbol": symbol, "symbols": state.summaries(),
                                 "snapshot": state.snapshot(symbol) if symbol else None, "stats": stats()})

        sub = state.subscribe(symbol)
        first = hello()

        async def stream():
            try:
                yield b"retry: 2000\n\n" + first
                last_stats = last_sent = time.monotonic()
                while True:
                    if sub.overflowed:  # this page fell behind: drop its queue, send it a fresh state
                        while not sub.queue.empty():
                            sub.queue.get_nowait()
                        sub.overflowed = False
                        yield hello()
                        continue
                    now = time.monotonic()
                    if now - last_stats >= STATS_EVERY_S:
                        last_stats = last_sent = now
                        yield sse("stats", stats())
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), timeout=STATS_EVERY_S)
                    except asyncio.TimeoutError:
                        if time.monotonic() - last_sent >= KEEPALIVE_S:
                            last_sent = time.monotonic()
                            yield b": keepalive\n\n"
                        continue
                    last_sent = time.monotonic()
                    yield sse(event["type"], event)
            finally:
                state.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class ViewServer:
    """The app served by uvicorn, and the feed reading Kafka, as tasks of the running loop."""

    def __init__(self, state: ViewState, feed, host: str = "127.0.0.1", port: int = 8050):
        self.state, self.feed, self.host, self.port = state, feed, host, port
        self.server = None
        self._tasks: list[asyncio.Task] = []

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def start(self) -> str:
        """Bind, connect the feed, then serve; returns the page's URL (port 0: a free port)."""
        import uvicorn

        # Bound here, not by uvicorn: a port in use is then an OSError to report, where uvicorn
        # would log it and exit the whole process.
        try:
            sock = _bind(self.host, self.port)
        except OSError as exc:
            raise StartupError(f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc}; "
                               "choose another --port (0: any free one) or --host") from None
        self.port = sock.getsockname()[1]
        try:
            if self.feed is not None:
                await self.feed.start()
        except BaseException:
            sock.close()
            raise
        if self.feed is not None:
            self._tasks.append(asyncio.create_task(self.feed.run(), name="kronos-rt-view-feed"))
        config = uvicorn.Config(create_app(self.state, self.feed), log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=1, access_log=False)
        self.server = _server_class()(config)
        serving = asyncio.create_task(self.server.serve(sockets=[sock]), name="kronos-rt-view-http")
        self._tasks.append(serving)
        while not self.server.started:
            if serving.done():
                await self.stop()
                raise OSError(f"cannot serve on {self.host}:{self.port}")
            await asyncio.sleep(0.02)
        return self.url

    async def wait(self) -> None:
        """Until the server or the feed stops (the feed failing ends the view)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.feed is not None:
            self.feed.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        self._tasks = []
        if self.feed is not None:
            await self.feed.close()


def _bind(host: str, port: int):
    import socket

    family, kind, proto, _, address = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """Leaves the signals to the caller (the CLI's Ctrl-C, the demo's own)."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server

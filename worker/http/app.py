"""The FastAPI app: routes, bearer auth, body limit, CORS, request metrics, JSON errors.

Every error is `{"error": {"status", "code", "message", "field"?}}`; `field` names the
input at fault in the request's own terms (`bars[3].high`, `series[1].pred_len`).
Overload answers 429 (queue full) or 503 (timeout, shutting down) with Retry-After.
"""

import hmac
import math
import time
from typing import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.http.schema import fast_batch, fast_request, request_models
from worker.http.service import ApiError, ForecastService


def _field(loc) -> str:
    """('body', 'series', 1, 'bars', 3, 'high') -> 'series[1].bars[3].high'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _error(err: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(math.ceil(err.retry_after))} if err.retry_after is not None else None
    if err.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class _Json(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class BodyLimit:
    """413 for bodies over `max_bytes`, by Content-Length or counted as they stream in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ApiError(413, "too_large", f"request body over {self.max_bytes} bytes", "body")
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _error(too_large)(scope, receive, send)
        seen, over = 0, False

        async def limited():
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}  # stop reading: the answer is 413
            return msg

        async def guarded_send(msg):
            if not over:
                await send(msg)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await _error(too_large)(scope, receive, send)


class RequestMetrics:
    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [499]  # 499: the client went away before an answer

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_)
        except Exception:
            status[0] = 500
            raise
        finally:
            self.metrics.observe(scope["path"], status[0], time.perf_counter() - t0)


def create_app(service: ForecastService, *, metrics, registry, api_token: str = "", strict: bool = True,
               max_body_bytes: int = 8 << 20, cors_origins: tuple[str, ...] = (),
               ready_checks: Callable[[], dict[str, bool]] = lambda: {}, models_info: Callable[[], dict] = dict):
    """The ASGI app. `service` does the work; `metrics` (HttpMetrics) and `registry` (the
    Prometheus registry /metrics shows) may be shared with a worker."""
    ForecastRequest, BatchRequest = request_models(strict)
    s = service.s
    app = FastAPI(title="kronos-rt", version="1", summary="Kronos candlestick forecasts, batched with the stream",
                  default_response_class=_Json)
    token = api_token.encode()

    def authorize(request: Request) -> None:
        if not token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: no early exit, so timing does not leak how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            err = ApiError(400, "bad_json", f"body is not JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                           "body")
        elif _field(first.get("loc", ())) == "body":  # missing, or not an object
            err = ApiError(400, "bad_json", "the body must be a JSON object", "body")
        else:
            err = ApiError(422, "invalid", f"{_field(first['loc'])}: {first['msg']}", _field(first["loc"]))
        body = err.body()
        body["error"]["all"] = [{"field": _field(e["loc"]), "message": e["msg"]} for e in errs[:20]]
        return JSONResponse(body, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return JSONResponse({"error": {"status": exc.status_code, "code": "http", "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def _watch(request: Request):
        async def gone():
            # The body is read by now: the next ASGI message is the disconnect (or nothing
            # until the response is sent, when this is cancelled).
            while (await request.receive())["type"] != "http.disconnect":
                pass
        return gone

    def parse(raw: bytes, model):
        # Requests that fast_request/fast_batch did not take: pydantic names the field at fault.
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

    def documented(model) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}

    @app.post("/v1/forecast", summary="Forecast one series", openapi_extra=documented(ForecastRequest))
    async def forecast(request: Request):
        t0 = time.time()
        authorize(request)
        with service.arriving():  # the batcher may wait for this request while it is parsed
            raw = await request.body()
            req = fast_request(raw, strict) or parse(raw, ForecastRequest)
            jobs = [service.prepare(req, received=t0)]
        docs = await service.run(jobs, _watch(request))
        return docs[0] if docs is not None else Response(status_code=499)

    @app.post("/v1/forecast:batch", summary="Forecast many series in one request",
              openapi_extra=documented(BatchRequest))
    async def forecast_batch(request: Request):
        t0 = time.time()
        authorize(request)
        with service.arriving():
            raw = await request.body()
            series = fast_batch(raw, strict) or parse(raw, BatchRequest).series
            if not 1 <= len(series) <= s.http_max_series:
                raise ApiError(422, "invalid", f"need 1 to {s.http_max_series} series, got {len(series)}", "series")
            jobs = [service.prepare(r, where=f"series[{i}].", received=t0) for i, r in enumerate(series)]
        docs = await service.run(jobs, _watch(request))
        return {"forecasts": docs} if docs is not None else Response(status_code=499)

    @app.get("/v1/models", summary="The model serving forecasts, and its registry versions")
    async def models(request: Request):
        authorize(request)
        return models_info()

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return Response("ok", media_type="text/plain")

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        try:
            checks = {str(k): bool(v) for k, v in ready_checks().items()}
        except Exception:
            checks = {"ready_checks": False}
        return JSONResponse(checks, status_code=200 if all(checks.values()) else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prom():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ForecastRequest, BatchRequest):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(js.pop("$defs", {}))
                comps[model.__name__] = js
        return app.openapi_schema

    app.openapi = openapi

    if cors_origins:  # off by default: browsers get no cross-origin access unless asked for
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app

"""uvicorn inside the caller's event loop (the worker's, or `kronos-rt serve`'s), and
`start_api`, which wires the service and app onto an Inference and MicroBatcher."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # The host process owns SIGTERM/SIGINT (the worker drains and commits on them);
        # uvicorn would otherwise take them over and re-raise them on exit.
        yield


class HttpServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                                     access_log=False, timeout_graceful_shutdown=5)
        self.server = _Server(self.config)
        self.host = host
        self.port: int | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        self._task = asyncio.create_task(self.server.serve(), name="http-api")
        while not self.server.started:
            if self._task.done():  # e.g. the port is taken
                self._task.result()
                raise RuntimeError(f"HTTP server on {self.host}:{self.config.port} did not start")
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        log.info("HTTP API listening on http://%s:%d (docs at /docs)", self.host, self.port)
        return self.port

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), close."""
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            self.server.force_exit = True
            self._task.cancel()
        except Exception:
            log.exception("HTTP server failed")
        self._task = None


def models_info(service) -> dict:
    """GET /v1/models: the serving model, and the registry's versions of it when it is one."""
    inf = service.inference
    ref, engine = inf.model_ref, inf.engine
    out = {"model": {"name": ref.name, "version": ref.version, "location": ref.location,
                     "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
                     "random_weights": bool(getattr(ref, "random_weights", False))},
           "defaults": {"pred_len": service.s.pred_len, "interval": service.s.interval,
                        "temperature": inf.sampling.temperature, "top_k": inf.sampling.top_k,
                        "top_p": inf.sampling.top_p, "sample_count": inf.sampling.sample_count,
                        "quantiles": list(service.s.quantiles)},
           "limits": {"max_bars": service.s.http_max_bars, "max_pred_len": service.s.http_max_pred_len,
                      "max_series": service.s.http_max_series, "max_queue": service.batcher.low_max_queue}}
    try:
        from kronos_rt.registry import Registry

        reg = Registry(service.s.registry or None)
        if ref.name in reg.names():
            out["registry"] = {"name": ref.name, "versions": reg.versions(ref.name), "latest": reg.latest(ref.name)}
    except Exception:  # no registry here: the model came from a directory or the hub
        pass
    return out


async def start_api(settings, inference, batcher, registry, ready_checks, host: str | None = None,
                    port: int | None = None) -> HttpServer:
    """Serve the HTTP API on `inference` through `batcher`'s lower-priority lane; metrics
    on `registry`. Returns the started HttpServer (its .port is the bound port)."""
    from worker.http.app import create_app
    from worker.http.metrics import HttpMetrics
    from worker.http.service import ForecastService

    s = settings
    metrics = HttpMetrics(registry)
    service = ForecastService(s, inference, batcher, metrics)
    app = create_app(service, metrics=metrics, registry=registry, api_token=s.api_token,
                     strict=bool(s.http_strict), max_body_bytes=s.http_max_body_kb * 1024,
                     cors_origins=tuple(o.strip() for o in s.http_cors.split(",") if o.strip()),
                     ready_checks=ready_checks, models_info=lambda: models_info(service))
    server = HttpServer(app, host or s.http_host, s.http_port if port is None else port)
    server.service = service
    await server.start()
    return server


class Standalone:
    """`kronos-rt serve` without the stream: an engine, its batcher and the API.
    `async with Standalone(settings, engine, model_ref) as api: api.port ...`"""

    def __init__(self, settings, engine, model_ref, metrics=None):
        from worker.ops.metrics import WorkerMetrics

        self.s, self.engine, self.model_ref = settings, engine, model_ref
        self.metrics = metrics or WorkerMetrics()
        self.ready = {"model_loaded": False}
        self.inference = self.batcher = self.http = None
        self.port: int | None = None
        self._reload = asyncio.Event()  # SIGHUP: re-check the registry now
        self._follow: asyncio.Task | None = None

    def reload(self) -> None:
        """SIGHUP: look for a new model version now (call on the loop)."""
        self._reload.set()

    async def start(self) -> "Standalone":
        from worker.pipeline.batcher import MicroBatcher
        from worker.pipeline.inference import Inference

        s = self.s

        async def no_stream(batch):  # only the lower-priority lane is used here
            pass

        self.inference = Inference(self.engine, self.model_ref, s, self.metrics)
        self.batcher = MicroBatcher(self.inference.compute, no_stream, s.max_batch, s.max_wait_ms / 1000,
                                    low_max_queue=s.http_max_queue)
        self.batcher.start()
        await self.batcher.run_in_thread(self.inference.warm_up)
        self.ready["model_loaded"] = True
        from worker.lifecycle.hotswap import follow_registry

        # --model NAME@latest, as the worker does: a new `latest` is verified, loaded and switched
        # to between two batches; each answer names the version that made it.
        self._follow = asyncio.create_task(
            follow_registry(s, self.inference, self.batcher, self.metrics, self._reload), name="models")
        self.http = await start_api(s, self.inference, self.batcher, self.metrics.registry, lambda: dict(self.ready))
        self.port = self.http.port
        return self

    async def stop(self, timeout: float = 10.0) -> None:
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
            self._follow = None
        if self.http is not None:
            self.http.service.closed = True
            await self.http.stop(timeout)
        if self.batcher is not None:
            await self.batcher.drain(timeout)
            await self.batcher.close()
        if self.inference is not None and self.inference.engine is not self.engine:
            from worker.pipeline.inference import close_engine

            close_engine(self.inference.engine)  # a version swapped in: loaded here, ended here

    async def __aenter__(self) -> "Standalone":
        try:
            return await self.start()
        except BaseException:
            await self.stop(1.0)
            raise

    async def __aexit__(self, *exc) -> None:
        await self.stop()

"""Prometheus metrics of a streaming worker, and the small HTTP server that exposes them.

Every worker owns its own CollectorRegistry (not the process-global one) so several
workers can run side by side in one test process without name clashes.

Endpoints served by MetricsServer:
  /metrics  Prometheus text exposition of the worker's registry
  /healthz  200 "ok" while the process (and so this thread) is alive
  /readyz   200 when every ready check is true, else 503; JSON body {check: bool}, plus
            the details the owner adds (the Redis topology and node in use: strings)
A scrape of /metrics reads the same checks into kronos_rt_ready{check}, so dashboards and
alerts see what /readyz would answer.
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from prometheus_client.core import CounterMetricFamily

from worker.quality.live import QualityMetrics
from worker.calendars.sessions import built_calendars
from worker.pipeline.windows import Upsert

log = logging.getLogger(__name__)

# Forecast latency spans ~1 ms (warm batch of one) to seconds (cold start, big batch, slow broker ack).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1, 2, 4, ..., 1024

STAGES = ("receive", "queue", "inference", "publish")
# The window upsert's outcomes (worker/pipeline/windows.py), plus the ones ingest adds.
EVENT_OUTCOMES = tuple(u.value for u in Upsert) + ("dlq", "buffered")
SWAP_RESULTS = ("ok", "rejected")
GPU_MEMORY_KINDS = ("allocated", "reserved")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.e2e_latency = Histogram(
            "kronos_rt_forecast_latency_seconds",
            "Bar's Kafka timestamp to its forecast being acknowledged by the broker.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_latency = Histogram(
            "kronos_rt_stage_latency_seconds",
            "Latency of one pipeline stage: receive (Kafka ts -> received), queue (ready -> batch start), "
            "inference, publish.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "kronos_rt_batch_size", "Windows per inference micro-batch.",
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "kronos_rt_queue_depth", "Ready windows waiting for an inference batch.", registry=r,
        )
        self.events = Counter(
            "kronos_rt_events", "Bar events consumed, by what happened to them.", ["outcome"], registry=r,
        )
        self.dlq = Counter(
            "kronos_rt_dlq_events", "Events sent to the dead-letter topic, by reason.", ["reason"], registry=r,
        )
        self.forecasts = Counter("kronos_rt_forecasts", "Forecasts published and acknowledged.", registry=r)
        self.consumer_lag = Gauge(
            "kronos_rt_consumer_lag_messages",
            "Messages between the consumer position and the partition high-watermark.",
            ["topic", "partition"], registry=r,
        )
        self.model_info = Info("kronos_rt_model", "Model currently serving forecasts.", registry=r)
        self.engine_restarts = Counter(
            "kronos_rt_engine_restarts", "Engine processes (--inference process) that exited and were started "
            "again; the batch in flight was sent again.", registry=r,
        )
        self.gpu_memory = Gauge(
            "kronos_rt_gpu_memory_bytes", "CUDA memory held by the worker (0 on CPU).", ["kind"], registry=r,
        )
        self.window_rebuilds = Counter(
            "kronos_rt_window_rebuilds",
            "Partitions whose windows were rebuilt from the bar topic (Redis lost them: flush, failover "
            "onto an empty Redis).",
            registry=r,
        )
        self.model_swaps = Counter(
            "kronos_rt_model_swaps", "Hot model swaps attempted, by result.", ["result"], registry=r,
        )
        self.publish_retries = Counter(
            "kronos_rt_publish_retries", "Sends to Kafka retried after a failure, by topic.", ["topic"],
            registry=r,
        )
        self.quality = QualityMetrics(r)  # forecast scores and band coverage (worker/quality/live.py)
        self.paused_partitions = Gauge(
            "kronos_rt_paused_partitions", "Partitions paused for backpressure.", registry=r,
        )
        self.redis_info = Info(
            "kronos_rt_redis", "The Redis topology (single, sentinel, cluster) and the node in use: the server, "
            "Sentinel's current primary, or a Cluster's masters.", registry=r,
        )
        self.ready = Gauge(
            "kronos_rt_ready", "1 while a /readyz check holds, else 0, by check (read at every scrape).", ["check"],
            registry=r,
        )
        self.closed_period_bars = Counter(
            "kronos_rt_bars_closed_period",
            "Bars accepted although stamped inside a closed period of their symbol's calendar, by calendar "
            "and period (closed_day: weekend or holiday, break: e.g. lunch, outside_hours).",
            ["calendar", "period"], registry=r,
        )
        r.register(CalendarFallbacks())

        # Create the children whose label values are known up front, so dashboards and
        # alerts see zeros instead of missing series before the first event.
        for stage in STAGES:
            self.stage_latency.labels(stage=stage)
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome=outcome)
        for result in SWAP_RESULTS:
            self.model_swaps.labels(result=result)
        for kind in GPU_MEMORY_KINDS:
            self.gpu_memory.labels(kind=kind).set(0)

    def set_model(self, name: str, version: str, device: str, dtype: str, random_weights: bool = False) -> None:
        self.model_info.info({"name": str(name), "version": str(version), "device": str(device), "dtype": str(dtype),
                              "random_weights": "true" if random_weights else "false"})


class CalendarFallbacks:
    """kronos_rt_calendar_fallbacks_total{calendar}: horizons this process stamped (partly) by
    an exchange calendar's weekday rule because they ran past its table (worker/calendars/sessions.py).
    Read from the calendars at every scrape; they are built once per process, so the count
    is the process's."""

    def collect(self):
        family = CounterMetricFamily(
            "kronos_rt_calendar_fallbacks",
            "Forecast horizons stamped past the end of an exchange calendar's table, by the weekday rule "
            "(no holidays); widen --calendar-range.", labels=["calendar"])
        counts: dict[str, int] = {}
        for cal in built_calendars():  # one per code, unless the process built several spans of it
            counts[cal.name] = counts.get(cal.name, 0) + cal.fallbacks
        for name, n in sorted(counts.items()):
            family.add_metric([name], n)
        yield family

    def describe(self):
        yield CounterMetricFamily("kronos_rt_calendar_fallbacks", "", labels=["calendar"])


# Series names Prometheus stores for each family type (the text format appends these).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("", "_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def _metric_names(registry: CollectorRegistry) -> frozenset[str]:
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return frozenset(names)


def metric_names_of(build) -> frozenset[str]:
    """Series names of the metrics `build(registry)` registers (on a fresh registry)."""
    registry = CollectorRegistry()
    build(registry)
    return _metric_names(registry)


METRIC_NAMES: frozenset[str] = _metric_names(WorkerMetrics().registry)


class MetricsServer:
    def __init__(
        self,
        metrics: WorkerMetrics,
        port: int,
        host: str = "0.0.0.0",
        ready_checks: Callable[[], dict[str, bool]] = lambda: {},
        details: Callable[[], dict[str, str]] = lambda: {},
    ):
        self.metrics = metrics
        self.port = port
        self.host = host
        self.ready_checks = ready_checks
        self.details = details  # said in /readyz next to the checks (the Redis node), never a check
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        server = ThreadingHTTPServer((self.host, self.port), _make_handler(self))
        server.daemon_threads = True  # a stuck scrape must not keep the process alive
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        self.port = server.server_address[1]
        log.info("metrics server listening on %s:%d", self.host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        try:
            checks = {str(k): bool(v) for k, v in self.ready_checks().items()}
        except Exception:  # a broken check means "not ready", not a crashed endpoint
            log.exception("ready check failed")
            checks = {"ready_checks": False}
        for check, ok in checks.items():
            self.metrics.ready.labels(check=check).set(1 if ok else 0)
        return all(checks.values()), checks


def _make_handler(owner: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                owner.readiness()  # kronos_rt_ready{check} as of this scrape
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(owner.metrics.registry))
            elif path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok")
            elif path == "/readyz":
                ready, checks = owner.readiness()
                try:
                    body = {**owner.details(), **checks}
                except Exception:  # details never decide readiness, nor break the endpoint
                    body = checks
                self._send(200 if ready else 503, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            # Scrapes and probes every few seconds would drown the worker's log at INFO.
            log.debug("%s " + format, self.address_string(), *args)

    return Handler

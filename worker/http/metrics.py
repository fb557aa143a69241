"""Prometheus metrics of the HTTP API, on the registry it is given (the worker's, when mounted)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.ops.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS, metric_names_of

# Label values of `route`: fixed, so a scan of random paths cannot grow the series without bound.
ROUTES = ("/v1/forecast", "/v1/forecast:batch", "/v1/models", "/healthz", "/readyz", "/metrics",
          "/docs", "/openapi.json")


def route_label(path: str) -> str:
    return path if path in ROUTES else "other"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry):
        r = self.registry = registry
        self.requests = Counter("kronos_rt_http_requests", "HTTP requests answered, by route and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("kronos_rt_http_request_duration_seconds",
                                 "HTTP request received to response sent, by route and status.",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("kronos_rt_http_queue_depth",
                                 "HTTP forecast series waiting for or in an inference batch.", registry=r)
        self.batch_size = Histogram("kronos_rt_http_batch_size", "HTTP series per inference micro-batch.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.rejected = Counter("kronos_rt_http_rejected",
                                "HTTP forecast series not computed, by reason (queue_full, timeout, "
                                "client_gone, closed).", ["reason"], registry=r)
        for reason in ("queue_full", "timeout", "client_gone", "closed"):
            self.rejected.labels(reason=reason)

    def observe(self, path: str, status: int, seconds: float) -> None:
        route, code = route_label(path), str(status)
        self.requests.labels(route=route, status=code).inc()
        self.latency.labels(route=route, status=code).observe(seconds)


# What the API adds to a registry (the worker's, with --http-port): dashboards may use them.
HTTP_METRIC_NAMES: frozenset[str] = metric_names_of(HttpMetrics)

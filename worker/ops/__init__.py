"""Operating the service: what /readyz says, the Prometheus metrics, process memory settings.

- health.py: the ready checks (model, broker, Redis, fetch loop) kept true to the moment;
- metrics.py: the worker's Prometheus registry and the HTTP server for /metrics, /healthz,
  /readyz;
- allocator.py: glibc heap settings for repeated CPU forecasting.

May import: worker.pipeline and everything below it (contracts, calendars, adapters, config,
quality).
"""

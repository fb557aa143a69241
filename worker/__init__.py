"""kronos-rt streaming service: Kafka bars in, Redis windows, micro-batched Kronos, forecasts out.

Imports `kronos_rt` (the inference library) and `kronos_rt_client` (the wire rules it shares
with subscribers); neither imports this package. Its packages, lowest first (each imports only
those below it; tests/worker/test_layering.py checks):

- errors.py: errors a user can act on (exit 2 / exit 1, one line);
- contracts/: bar.v1 and forecast.v1 as the service reads and writes them;
- calendars/: trading sessions, the bar times after a bar;
- adapters/: Kafka and Redis connections, security flags, key schema, waiting for them;
- quality/: scores, calibrated bands, their Redis state;
- config.py: the worker's settings, flags and environment, model resolution;
- pipeline/: a bar's path (fetch, ingest, windows, batcher, inference, publish, commit) and
  at-least-once bookkeeping;
- ops/: readiness, metrics, memory settings;
- lifecycle/: hot swaps and shadow models;
- http/: the HTTP forecast API;
- app/: the Worker, wired from the parts above;
- view/: `kronos-rt view`, the live forecast page (reads the topics, never the service's state);
- tools/, cli/: commands around the service (demo, replay, report, benchmarks) and `kronos-rt`.

docs/ARCHITECTURE.md follows a bar through them.
"""

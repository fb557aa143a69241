"""A bar's path through the worker, and the bookkeeping that keeps delivery at-least-once.

The path: fetch.py (consumer -> handled messages) -> ingest.py (parse, upsert into the
symbol's Redis window: windows.py) -> batcher.py (micro-batches, one inference thread) ->
inference.py (engine calls) -> output.py (a finished batch) -> publish.py (forecasts and DLQ
copies, acks) -> commit.py (what offset each partition may commit).

Beside it: offsets.py (unfinished offsets per partition), partition.py (what a worker knows
of one partition), ownership.py (partitions added and dropped by rebalances), recovery.py
(windows lost by Redis rebuilt from the bar topic), runahead.py and flow.py (when to stop
taking bars), poison.py (no single message stops its partition), freeze.py (a worker that
stood still past its session drops its partitions on waking).

May import: kronos_rt, worker.contracts, worker.calendars, worker.adapters, worker.config,
worker.quality, worker.errors.
"""

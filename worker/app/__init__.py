"""The streaming worker (`kronos-rt worker`): its parts built in dependency order and its loops run.

- assembly.py: start-up; Redis, then the model, then the broker;
- worker.py: the Worker: the fetch loop, ticks, the broker probe, registry follow, shadows,
  and a clean stop.

May import: every worker package below it (pipeline, lifecycle, ops, http, ...); only the
CLI and tools import this.
"""

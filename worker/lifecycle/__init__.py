"""Model lifecycle in a running worker: hot swaps and shadow models.

- hotswap.py: follow the registry's `latest` (or SIGHUP), verify, load and switch between
  two batches;
- shadow.py: candidate versions forecast the primary's windows after it, on their own topic.

May import: worker.pipeline, worker.ops and everything below them.
"""

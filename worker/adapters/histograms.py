"""Many observations of one Prometheus histogram at once.

prometheus_client's `Histogram.observe` takes one value: a lock and a bucket search in
Python each time, four times per bar on the worker's event loop at a 5 000-symbol burst. A
batch's figures go in here together: the bucket counts by one `searchsorted`, each bucket
and the sum incremented once. The metric that comes out is the one the values would give
one by one (the sum up to float rounding: added once, not value by value).

It reaches into the histogram's own buckets (`_upper_bounds`, `_buckets`, `_sum`, the
layout of prometheus_client 0.8 to 0.26); a histogram without them is observed value by
value, so a change there costs speed, never a count.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def observe_many(hist, values: Sequence[float]) -> None:
    """hist.observe(v) for every v, in one go (hist: a histogram, or a labelled child)."""
    if not len(values):
        return
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            hist.observe(v)
        return
    hist._raise_if_not_observable()
    arr = np.asarray(values, dtype=np.float64)
    # observe() counts a value in the first bucket whose bound is >= it ("le"); NaN in none.
    counts = np.bincount(np.searchsorted(bounds, arr, side="left"), minlength=len(bounds) + 1)
    for i in np.flatnonzero(counts[:len(bounds)]):
        buckets[i].inc(int(counts[i]))
    total.inc(float(arr.sum()))


def observe_repeated(hist, value: float, count: int) -> None:
    """hist.observe(value), `count` times."""
    if count > 0:
        observe_many(hist, np.full(count, value, dtype=np.float64))

"""observe_many / observe_repeated give the histogram that one observe() per value gives."""
import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from worker.adapters.histograms import observe_many, observe_repeated


def _samples(registry: CollectorRegistry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}


def _pair(buckets=Histogram.DEFAULT_BUCKETS, labels=()):
    regs = CollectorRegistry(), CollectorRegistry()
    return regs, [Histogram("h_seconds", "h", labels, registry=r, buckets=buckets) for r in regs]


@pytest.mark.parametrize("values", [
    [0.0, 0.005, 0.0051, 0.1, 0.1, 7.5, 11.0, 1e9, 0.3, 0.75],   # on and between the bounds, past the last
    [0.25] * 37 + [2.0] * 5,
    [],
])
def test_equal_to_one_observe_per_value(values):
    (one, many), (h1, h2) = _pair()
    for v in values:
        h1.observe(v)
    observe_many(h2, values)
    a, b = _samples(one), _samples(many)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-12), k
    buckets = {k: v for k, v in a.items() if k[0] == "h_seconds_bucket"}
    assert buckets == {k: v for k, v in b.items() if k[0] == "h_seconds_bucket"}  # counts exactly


def test_labelled_child_custom_buckets_and_nan():
    (one, many), (h1, h2) = _pair(buckets=(1, 2, 3), labels=("stage",))
    values = [0.5, 1.0, 1.5, 3.0, 4.0, float("nan")]
    for v in values:
        h1.labels(stage="queue").observe(v)
    observe_many(h2.labels(stage="queue"), values)
    a, b = _samples(one), _samples(many)
    for k in a:
        if k[0] == "h_seconds_sum":
            assert math.isnan(a[k]) and math.isnan(b[k])  # NaN joins the sum, no bucket, as observe() does
        else:
            assert a[k] == b[k], k


def test_repeated_and_the_parent_of_labelled_metrics():
    (one, many), (h1, h2) = _pair()
    for _ in range(9):
        h1.observe(0.02)
    observe_repeated(h2, 0.02, 9)
    observe_repeated(h2, 0.02, 0)
    assert _samples(one) == pytest.approx(_samples(many))
    (_, _), (p1, p2) = _pair(labels=("stage",))
    with pytest.raises(ValueError):  # a parent with labels cannot be observed, either way
        observe_many(p2, [1.0])


def test_a_histogram_without_the_known_layout_is_observed_one_by_one():
    seen = []

    class Plain:
        def observe(self, v):
            seen.append(v)

    observe_many(Plain(), [1.0, 2.0])
    assert seen == [1.0, 2.0]

"""worker/pipeline/runahead.py: bars per symbol past the committed offset."""
from __future__ import annotations

import pytest

from worker.pipeline.runahead import RunAhead


def test_counts_per_symbol_until_committed():
    ra = RunAhead(limit=3)
    for offset, sym in enumerate(["A", "B", "A", "A", "B"]):
        ra.handled(offset, sym)
    assert (ra.ahead("A"), ra.ahead("B")) == (3, 2)
    assert ra.full("A") and not ra.full("B")
    ra.committed(3)  # offsets 0..2 are behind the commit now
    assert (ra.ahead("A"), ra.ahead("B"), len(ra)) == (1, 1, 2)
    assert not ra.full("A")
    ra.committed(None)  # nothing committed yet: no change
    ra.committed(5)
    assert len(ra) == 0 and ra.ahead("A") == 0


def test_a_bar_handled_twice_counts_twice_and_leaves_with_its_offset():
    ra = RunAhead(limit=2)
    ra.handled(7, "A")
    ra.handled(7, "A")  # handled again after a Redis outage
    assert ra.full("A")
    ra.committed(8)
    assert ra.ahead("A") == 0


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        RunAhead(0)

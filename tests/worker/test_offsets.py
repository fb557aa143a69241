import random

from worker.offsets import OffsetTracker


def test_nothing_seen_means_nothing_to_commit():
    t = OffsetTracker()
    assert t.committable("p0") is None
    assert t.outstanding() == 0


def test_seen_only_offsets_commit_past_the_highest():
    t = OffsetTracker()
    for o in (10, 11, 12):
        t.seen("p0", o)
    assert t.committable("p0") == 13


def test_commit_stops_at_lowest_pending_offset():
    t = OffsetTracker()
    t.add("p0", 5)
    t.seen("p0", 6)
    t.add("p0", 7)
    t.seen("p0", 8)
    assert t.committable("p0") == 5
    t.done("p0", 7)  # finishing a later one does not move the commit
    assert t.committable("p0") == 5
    t.done("p0", 5)
    assert t.committable("p0") == 9
    assert t.outstanding("p0") == 0


def test_multiple_tasks_for_one_offset_all_must_finish():
    t = OffsetTracker()
    t.add("p0", 3)
    t.add("p0", 3)
    t.done("p0", 3)
    assert t.committable("p0") == 3
    t.done("p0", 3)
    assert t.committable("p0") == 4


def test_partitions_are_independent_and_reset_forgets():
    t = OffsetTracker()
    t.add("p0", 1)
    t.seen("p1", 100)
    assert t.committable("p0") == 1
    assert t.committable("p1") == 101
    t.reset("p0")
    assert t.committable("p0") is None
    t.done("p0", 1)  # a late ack for a revoked partition is ignored
    assert t.outstanding() == 0
    assert sorted(t.partitions()) == ["p1"]


def test_random_completion_order_matches_brute_force():
    rng = random.Random(7)
    t = OffsetTracker()
    pending = set()
    for o in range(500):
        if rng.random() < 0.6:
            t.add("p", o)
            pending.add(o)
        else:
            t.seen("p", o)
        if pending and rng.random() < 0.5:
            finished = rng.choice(sorted(pending))
            pending.remove(finished)
            t.done("p", finished)
        expected = min(pending) if pending else o + 1
        assert t.committable("p") == expected

import random

from worker.pipeline.offsets import PartitionOffsets


def test_nothing_seen_means_nothing_to_commit():
    t = PartitionOffsets()
    assert t.committable() is None
    assert t.outstanding() == 0


def test_seen_only_offsets_commit_past_the_highest():
    t = PartitionOffsets()
    for o in (10, 11, 12):
        t.seen(o)
    assert t.committable() == 13


def test_commit_stops_at_lowest_pending_offset():
    t = PartitionOffsets()
    t.add(5)
    t.seen(6)
    t.add(7)
    t.seen(8)
    assert t.committable() == 5
    t.done(7)  # finishing a later one does not move the commit
    assert t.committable() == 5
    t.done(5)
    assert t.committable() == 9
    assert t.outstanding() == 0


def test_multiple_tasks_for_one_offset_all_must_finish():
    t = PartitionOffsets()
    t.add(3)
    t.add(3)
    t.done(3)
    assert t.committable() == 3
    t.done(3)
    assert t.committable() == 4


def test_unknown_offsets_are_ignored():
    t = PartitionOffsets()
    t.add(1)
    t.done(2)  # e.g. an ack for work added before a reassignment
    assert t.committable() == 1 and t.outstanding() == 1


def test_random_completion_order_matches_brute_force():
    rng = random.Random(7)
    t = PartitionOffsets()
    pending = set()
    for o in range(500):
        if rng.random() < 0.6:
            t.add(o)
            pending.add(o)
        else:
            t.seen(o)
        if pending and rng.random() < 0.5:
            finished = rng.choice(sorted(pending))
            pending.remove(finished)
            t.done(finished)
        expected = min(pending) if pending else o + 1
        assert t.committable() == expected

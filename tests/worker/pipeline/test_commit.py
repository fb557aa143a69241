"""worker/pipeline/commit.py: what is committed, when, and with which re-read position."""
import json

from worker.pipeline.commit import decode_rebuild_from, encode_metadata, inherited_floor, plan
from worker.pipeline.partition import PartitionState


def test_commit_waits_for_every_earlier_copy_to_be_acked():
    st = PartitionState("p0")
    st.offsets.add(5)      # forecast in flight
    st.offsets.seen(6)     # buffered bar: nothing to publish
    st.offsets.add(7)      # another forecast
    st.offsets.add(7)      # ... and a second copy of it (e.g. DLQ + forecast)
    assert plan([st], "w")["p0"][0] == 5
    st.offsets.done(7)
    st.offsets.done(5)
    assert plan([st], "w")["p0"][0] == 7  # one copy of 7 still unacked
    st.offsets.done(7)
    assert plan([st], "w")["p0"][0] == 8


def test_nothing_new_nothing_committed():
    st = PartitionState("p0")
    assert plan([st], "w") == {}
    st.offsets.seen(3)
    st.committed = 4
    assert plan([st], "w") == {}


def test_metadata_records_where_a_rebuild_must_start():
    st = PartitionState("p0", floor=40)
    st.oldest = {"AAA": 52, "BBB": 47}
    st.offsets.seen(60)
    _, meta = plan([st], "worker-1")["p0"]
    assert json.loads(meta) == {"rebuild_from": 40, "worker": "worker-1"}
    st.floor = None
    assert decode_rebuild_from(plan([st], "w")["p0"][1]) == 47


def test_what_an_heir_takes_from_the_commit():
    assert inherited_floor(None, None) is None                  # nothing committed: nothing to rebuild
    assert inherited_floor(120, encode_metadata(88, "w")) == 88  # the recorded position
    assert inherited_floor(120, "") == 0                         # committed without one (Tansu drops it)
    assert inherited_floor(120, '{"rebuild_from": null}') == 0
    assert inherited_floor(-1, "") is None


async def test_refused_commits_are_said_once_and_their_end_too(caplog):
    import logging

    from aiokafka import TopicPartition
    from aiokafka.errors import CommitFailedError

    from worker.pipeline.commit import Committer

    class Consumer:
        def __init__(self):
            self.refuse = 3
            self.committed = {}

        async def commit(self, offsets):
            if self.refuse:
                self.refuse -= 1
                raise CommitFailedError("Commit cannot be completed since the group has already\n  rebalanced")
            self.committed.update(offsets)

    caplog.set_level(logging.INFO, logger="worker.pipeline.commit")
    consumer = Consumer()
    committer = Committer(consumer, "w1")
    st = PartitionState(TopicPartition("bars", 0))
    st.offsets.seen(4)
    results = [await committer.commit([st]) for _ in range(4)]
    assert results == [False, False, False, True] and st.committed == 5
    assert [r.getMessage() for r in caplog.records] == [
        "commits refused (CommitFailedError: Commit cannot be completed since the group has already): the group is "
        "rebalancing or went on without this worker; what is not committed is re-read by the partitions' next owners",
        "commits accepted again"]

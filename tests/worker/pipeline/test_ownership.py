"""worker/pipeline/ownership.py without Kafka: what a partition starts from when assigned, and what
revoking one waits for, commits and forgets."""
from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from worker.pipeline import ownership
from worker.pipeline.commit import encode_metadata
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.ownership import RUNAHEAD_LIMIT, Ownership

A, B, C = (TopicPartition("bars", i) for i in range(3))


class Committer:
    def __init__(self):
        self.commits = []

    async def commit(self, states):
        # What was still outstanding at the commit, per partition.
        self.commits.append({st.tp.partition: st.offsets.outstanding() for st in states})


class Store:
    def __init__(self):
        self.forgotten = []

    def forget(self, symbols):
        self.forgotten += sorted(symbols)


def make(committed, drain_timeout_s=1.0):
    async def fetch_committed(consumer, tps):
        return {tp: committed[tp] for tp in tps if tp in committed}

    states, owned = {}, []
    own = Ownership(states, consumer=None, committer=Committer(), store=Store(), metrics=WorkerMetrics(),
                    drain_timeout_s=drain_timeout_s, on_owned=lambda: owned.append(True))
    return own, states, owned, fetch_committed


async def test_assigned_partitions_start_from_the_group_commit_and_its_recorded_rebuild_position(monkeypatch):
    committed = {A: (120, encode_metadata(40, "w0")), B: (7, "")}  # C: never committed
    own, states, owned, fetch_committed = make(committed)
    monkeypatch.setattr(ownership.kafka, "fetch_committed", fetch_committed)
    await own.on_partitions_assigned([A, B, C])
    assert (states[A].committed, states[A].floor) == (120, 40)
    assert (states[B].committed, states[B].floor) == (7, 0)  # committed without a position: rebuild from 0
    assert (states[C].committed, states[C].floor) == (None, None)
    assert all(st.runahead.limit == RUNAHEAD_LIMIT and st.owned for st in states.values())
    assert owned == [True]


async def test_assignment_survives_a_failed_committed_offsets_read(monkeypatch):
    own, states, owned, _ = make({})

    async def broken(consumer, tps):
        raise RuntimeError("coordinator gone")

    monkeypatch.setattr(ownership.kafka, "fetch_committed", broken)
    await own.on_partitions_assigned([A])
    # Unknown is not "never committed": Redis may have lost windows the consumer starts past.
    assert states[A].committed is None and states[A].floor == 0 and owned == [True]


async def test_revoking_waits_for_in_flight_copies_then_commits_and_drops_the_partition(monkeypatch):
    own, states, _, fetch_committed = make({})
    monkeypatch.setattr(ownership.kafka, "fetch_committed", fetch_committed)
    await own.on_partitions_assigned([A, B])
    st = states[A]
    st.oldest = {"AAA": 3, "BBB": 5}
    st.offsets.add(10)
    st.offsets.add(11)
    assert own.outstanding() == 2

    async def acks():
        await asyncio.sleep(0.05)
        st.offsets.done(10)
        st.offsets.done(11)

    ack_task = asyncio.create_task(acks())
    await own.on_partitions_revoked([A])
    await ack_task
    assert own.committer.commits == [{0: 0}]  # committed after both acks arrived, not before
    assert not st.owned and A not in states and B in states
    assert own.store.forgotten == ["AAA", "BBB"]
    assert own.outstanding() == 0


async def test_revoking_commits_what_it_can_when_the_drain_timeout_passes(monkeypatch):
    own, states, _, fetch_committed = make({}, drain_timeout_s=0.05)
    monkeypatch.setattr(ownership.kafka, "fetch_committed", fetch_committed)
    await own.on_partitions_assigned([A])
    states[A].offsets.add(10)  # never acknowledged
    await own.on_partitions_revoked([A])
    assert own.committer.commits == [{0: 1}] and not states


async def test_revoking_a_partition_not_owned_does_nothing():
    own, states, _, _ = make({})
    await own.on_partitions_revoked([A])
    assert own.committer.commits == [] and states == {}

"""worker/pipeline/freeze.py and what the worker does when it stood still past its session: every
partition dropped without a commit, nothing more written for them, the group asked to rejoin."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from worker.pipeline.freeze import FreezeWatch
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.ownership import Ownership
from worker.pipeline.partition import PartitionState


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_gap_longer_than_the_limit_is_reported_once():
    clock, seen = Clock(), []
    watch = FreezeWatch(3.0, seen.append, clock=clock)
    clock.now += 2.9
    assert watch.poll() is False
    clock.now += 4.5  # SIGSTOP for 4.5 s
    assert watch.poll() is True
    assert watch.poll() is False  # the next caller after the wake sees nothing more
    assert seen == [pytest.approx(4.5)] and watch.freezes == 1


def test_a_limit_shorter_than_the_tick_is_refused():
    with pytest.raises(ValueError, match="longer than the tick"):
        FreezeWatch(0.05, print, tick_s=0.1)


async def test_the_background_tick_keeps_a_busy_but_running_loop_from_counting_as_frozen():
    seen = []
    watch = FreezeWatch(0.3, seen.append, tick_s=0.02)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.5)  # a long await elsewhere (e.g. Redis waited out) is not a freeze
    task.cancel()
    assert seen == [] and watch.freezes == 0


class Store:
    def __init__(self):
        self.forgotten = []

    def forget(self, symbols):
        self.forgotten += sorted(symbols)


async def test_dropping_every_partition_stops_their_writers_and_commits_nothing():
    states = {}
    commits = []

    class Committer:
        async def commit(self, sts):
            commits.append(sts)

    own = Ownership(states, consumer=None, committer=Committer(), store=Store(), metrics=WorkerMetrics(),
                    drain_timeout_s=1.0)
    a, b = TopicPartition("bars", 0), TopicPartition("bars", 3)
    states[a], states[b] = PartitionState(a), PartitionState(b)
    states[a].oldest = {"AAA": 4}
    held = [states[a], states[b]]
    assert own.drop_all() == [0, 3]
    assert states == {} and not any(st.owned for st in held)
    assert own.store.forgotten == ["AAA"]
    await own.on_partitions_revoked([a, b])  # aiokafka's revocation on the rejoin: nothing left to do
    assert commits == []

"""worker/pipeline/fetch.py without Kafka or Redis: what the fetch loop does with each kind of failure.

The parts around it are recording stand-ins; the ingest stand-in fails chosen messages
with chosen errors (a Redis reply error, an outage, a bug)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError

from worker.contracts import events
from worker.pipeline import poison
from worker.pipeline.fetch import FetchLoop
from worker.ops.health import Health
from worker.pipeline.ingest import DeadLetter, Parsed
from worker.pipeline.partition import PartitionState

TP = TopicPartition("bars", 0)
REAL_DELAY = poison.reply_retry_delay  # before the autouse fixture below replaces it


def msg(offset):
    return SimpleNamespace(offset=offset, key=b"AAA", value=b"{}", timestamp=0)


class Consumer:
    """getmany hands out the given fetches, then nothing; `errors` are raised first."""
    def __init__(self, fetches, errors=()):
        self.fetches = list(fetches)
        self.errors = list(errors)

    async def getmany(self, timeout_ms, max_records):
        await asyncio.sleep(0)
        if self.errors:
            raise self.errors.pop(0)
        return {TP: self.fetches.pop(0)} if self.fetches else {}


class Ingest:
    """handle() raises failures[offset] (a list, one error per try) and then succeeds."""
    def __init__(self, failures=None):
        self.failures = failures or {}
        self.tries: dict[int, int] = {}
        self.parsed: list[list[int]] = []  # offsets of each parse_fetch call

    async def parse_fetch(self, batch):
        self.parsed.append([m.offset for msgs in batch.values() for m in msgs])
        return {(tp, m.offset): Parsed(events.InvalidEvent("x", "not a bar, so no run-ahead"))
                for tp, msgs in batch.items() for m in msgs}

    async def handle(self, st, m, parsed):
        self.tries[m.offset] = self.tries.get(m.offset, 0) + 1
        errors = self.failures.get(m.offset, [])
        if errors:
            raise errors.pop(0)
        st.handled(m.offset)
        return ("ready", m.offset)

    def flush_metrics(self):
        self.flushes = getattr(self, "flushes", 0) + 1


class Recorder:
    def __init__(self):
        self.submitted, self.dead, self.ridden, self.feeds = [], [], [], []
        self.pending = self.queued = 0
        self.lost = False

    # batcher
    def submit(self, item):
        self.submitted.append(item[1])

    def feeding(self, more):
        self.feeds.append(more)

    # publisher
    async def dead_letter(self, topic, item: DeadLetter):
        self.dead.append((item.offset, item.reason, item.detail))

    # recovery
    async def check(self, st, offset):
        st.checked = True

    async def ride_out(self, err, flow, health, states, stopping):
        self.ridden.append(type(err).__name__)

    # flow
    async def backpressure(self, pending, max_queue):
        pass

    async def within_runahead(self, st, symbol, commit, stopping):
        return True


class RecordingHealth(Health):
    """The real Health, remembering each change of its "fetching" flag."""
    def __init__(self):
        super().__init__()
        self.fetching: list[bool] = []

    def fetch_stalled(self, stalled, why=""):
        before = self.checks()["fetching"]
        super().fetch_stalled(stalled, why)
        if self.checks()["fetching"] != before:
            self.fetching.append(not before)


def make(fetches, ingest, errors=()):
    rec = Recorder()
    metrics = SimpleNamespace(queue_depth=SimpleNamespace(set=lambda n: None))
    parts = SimpleNamespace(consumer=Consumer(fetches, errors), ingest=ingest, recovery=rec, flow=rec, batcher=rec,
                            publisher=rec, committer=None, scoring=None, health=RecordingHealth(), metrics=metrics)
    states = {TP: PartitionState(TP)}
    stop = asyncio.Event()
    settings = SimpleNamespace(max_queue=100, dlq_topic="bars.dlq", max_batch=64)
    return FetchLoop(parts, states, settings, stop.is_set), rec, states, stop


async def run_until(loop: FetchLoop, stop: asyncio.Event, done, timeout=10.0):
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                assert not task.done(), task.exception()
                await asyncio.sleep(0.001)
    finally:
        stop.set()
        await task


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    monkeypatch.setattr(poison, "reply_retry_delay", lambda attempt: 0.0)


async def test_a_reply_error_that_persists_sends_its_message_to_the_dlq_after_the_retries_and_the_partition_moves_on():
    ingest = Ingest({2: [ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")] * 99})
    loop, rec, states, stop = make([[msg(i) for i in range(5)]], ingest)
    await run_until(loop, stop, lambda: len(rec.submitted) == 4 and rec.dead)
    assert rec.submitted == [0, 1, 3, 4]
    assert ingest.tries[2] == poison.REPLY_RETRIES
    [(offset, reason, detail)] = rec.dead
    assert (offset, reason) == (2, poison.INFRASTRUCTURE_ERROR) and detail.startswith("ResponseError: WRONGTYPE")
    st = states[TP]
    # Offset 2 waits for its DLQ copy's ack like any other copy (the stand-in acks nothing).
    assert st.processed == 5 and st.offsets.outstanding() == 5
    assert loop.bars == 5
    # The whole fetch parsed at once; after the first failure one message at a time, to its end.
    assert ingest.parsed == [[0, 1, 2, 3, 4]] + [[2]] * (poison.REPLY_RETRIES - 1) + [[3], [4]]
    assert not rec.ridden
    assert loop.p.health.fetching == []  # the partition moved on: /readyz never said stuck


async def test_a_reply_error_that_clears_loses_nothing_and_dead_letters_nothing():
    ingest = Ingest({1: [ResponseError("BUSY"), ResponseError("BUSY")]})
    loop, rec, _, stop = make([[msg(i) for i in range(4)]], ingest)
    await run_until(loop, stop, lambda: len(rec.submitted) == 4)
    assert rec.submitted == [0, 1, 2, 3] and ingest.tries[1] == 3
    assert not rec.dead and not rec.ridden
    assert ingest.parsed == [[0, 1, 2, 3], [1], [1], [2], [3]]


async def test_an_outage_is_waited_out_however_often_it_fails_and_never_dead_letters():
    n = poison.REPLY_RETRIES + 3
    ingest = Ingest({2: [RedisConnectionError("Connection refused")] * n})
    loop, rec, _, stop = make([[msg(i) for i in range(4)]], ingest)
    await run_until(loop, stop, lambda: len(rec.submitted) == 4)
    assert rec.submitted == [0, 1, 2, 3]
    assert rec.ridden == ["ConnectionError"] * n and not rec.dead
    assert ingest.parsed == [[0, 1, 2, 3]] + [[2, 3]] * n  # an outage: the rest pipelined again


async def test_a_bug_while_handling_sends_the_message_to_the_dlq_at_once():
    ingest = Ingest({1: [ValueError("nobody foresaw this")]})
    loop, rec, _, stop = make([[msg(i) for i in range(3)]], ingest)
    await run_until(loop, stop, lambda: len(rec.submitted) == 2 and rec.dead)
    assert rec.submitted == [0, 2] and ingest.tries[1] == 1
    assert rec.dead == [(1, poison.INTERNAL_ERROR, "ValueError: nobody foresaw this")]


async def test_a_reply_error_with_no_message_to_blame_is_retried_not_dead_lettered():
    ingest = Ingest()
    errors = [ResponseError("fetch failed")] * (poison.REPLY_RETRIES + 2)
    loop, rec, _, stop = make([[msg(i) for i in range(3)]], ingest, errors=errors)
    await run_until(loop, stop, lambda: len(rec.submitted) == 3)
    assert rec.submitted == [0, 1, 2] and not rec.dead and not rec.ridden
    # Stuck for REPLY_RETRIES tries: /readyz said so once, and took it back once the fetch went through.
    assert loop.p.health.fetching == [False, True]
    assert loop.p.health.checks()["fetching"] is True


async def test_a_short_run_of_fetch_errors_does_not_touch_readiness():
    errors = [ResponseError("fetch failed")] * (poison.REPLY_RETRIES - 1)
    loop, rec, _, stop = make([[msg(0)]], Ingest(), errors=errors)
    await run_until(loop, stop, lambda: rec.submitted == [0])
    assert loop.p.health.fetching == []


async def test_readiness_says_stuck_while_fetch_errors_last():
    errors = [ResponseError("fetch failed")] * 100_000
    loop, rec, _, stop = make([[msg(0)]], Ingest(), errors=errors)
    health = loop.p.health
    await run_until(loop, stop, lambda: health.fetching == [False])
    assert health.checks()["fetching"] is False and not rec.submitted


async def test_messages_of_a_partition_revoked_mid_fetch_are_left_to_the_next_owner():
    ingest = Ingest()
    loop, rec, states, stop = make([[msg(i) for i in range(4)]], ingest)
    real = ingest.handle

    async def handle(st, m, parsed):
        out = await real(st, m, parsed)
        if m.offset == 1:
            states.pop(TP)  # revoked while the fetch is being handled
        return out

    ingest.handle = handle
    await run_until(loop, stop, lambda: len(rec.submitted) == 2 and loop.bars == 2)
    await asyncio.sleep(0.01)
    assert rec.submitted == [0, 1] and not rec.dead


def test_the_pause_between_reply_retries_grows_and_is_capped():
    assert [REAL_DELAY(n) for n in (1, 2, 3, 4, 7, 8, 50)] == [0.1, 0.2, 0.4, 0.8, 5.0, 5.0, 5.0]


async def test_the_batcher_hears_whether_more_of_a_burst_is_on_its_way():
    """Fetches the consumer already holds follow one another without a "nothing more" in
    between (the batcher keeps gathering); once it runs dry the batcher is told, before the
    loop waits on the broker."""
    loop, rec, states, stop = make([[msg(0), msg(1)], [msg(2)]], Ingest())
    await run_until(loop, stop, lambda: loop.bars == 3 and False in rec.feeds)
    assert rec.feeds[:3] == [True, True, False]
    assert loop.max_records == 500  # at least a full batch (max_batch 64 here) per fetch


async def test_a_worker_that_stood_still_handles_nothing_more_of_its_fetch():
    """worker/pipeline/freeze.py: on waking, every partition is dropped (here: the watch's callback) before
    the next message is handled; the rest of the fetch is the next owner's."""
    ingest = Ingest()
    loop, rec, states, stop = make([[msg(i) for i in range(6)]], ingest)
    handled = []

    async def handle(st, m, parsed):
        handled.append(m.offset)
        return await Ingest.handle(ingest, st, m, parsed)

    ingest.handle = handle

    def woke():
        if len(handled) == 3 and states:  # frozen after the third message
            states.clear()
            return True
        return False

    loop.woke = woke
    await run_until(loop, stop, lambda: not states)
    await asyncio.sleep(0.05)
    assert handled == [0, 1, 2] and rec.submitted == [0, 1, 2]


async def test_a_bar_whose_partition_is_revoked_while_it_is_handled_is_left_to_the_next_owner():
    """The race that lost forecasts in rolling restarts (issue 24): the partition is revoked
    while one bar's upsert is in flight; the revocation waits for the copies already sent,
    then commits. The bar handled meanwhile (ingest: revoked, so no forecast) must not move
    that commit past it."""
    from worker.ops.metrics import WorkerMetrics
    from worker.pipeline.ownership import Ownership

    commits = []

    class Committer:
        async def commit(self, sts):
            commits.append([st.offsets.committable() for st in sts])

    ingest = Ingest()
    loop, rec, states, stop = make([[msg(i) for i in range(4)]], ingest)
    st = states[TP]
    own = Ownership(states, consumer=None, committer=Committer(), store=SimpleNamespace(forget=lambda s: None),
                    metrics=WorkerMetrics(), drain_timeout_s=5.0)
    revoking = []

    async def handle(state, m, parsed):
        if m.offset < 2:
            return await Ingest.handle(ingest, state, m, parsed)
        # Offset 2's upsert is in flight when the group revokes the partition.
        revoking.append(asyncio.create_task(own.on_partitions_revoked([TP])))
        await asyncio.sleep(0.02)
        state.handled(m.offset)
        return None  # what Ingest.handle answers for a partition revoked meanwhile

    ingest.handle = handle
    await run_until(loop, stop, lambda: revoking and TP not in states and rec.submitted == [0, 1])
    for offset in (0, 1):  # the copies in flight are acknowledged: the revocation commits
        st.offsets.done(offset)
    await revoking[0]
    assert commits == [[2]]  # not 3: offset 2 was never forecast; the next owner reads it again

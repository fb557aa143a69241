"""worker/tools/replay.py: a send whose ack timed out is sent again instead of ending the replay."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

from worker.tools import replay as replay_mod
from worker.tools.replay import _settle


class FakeProducer:
    """Fails the first `failures` sends with `error`, acknowledges the rest."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.sent = failures, error, []

    async def send(self, topic, key=None, value=None):
        fut = asyncio.get_running_loop().create_future()
        self.sent.append(key)
        if len(self.sent) <= self.failures:
            fut.set_exception(self.error)
        else:
            fut.set_result(None)
        return fut


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    async def instant(_):
        return None
    monkeypatch.setattr(replay_mod.asyncio, "sleep", instant)


async def _pending(producer, keys):
    return [(await producer.send("t", key=k, value=b"v"), k, b"v") for k in keys]


async def test_timed_out_sends_are_sent_again():
    producer = FakeProducer(failures=3, error=KafkaTimeoutError())
    await _settle(producer, "t", await _pending(producer, [b"a", b"b", b"c", b"d"]))
    # the three that timed out went out once more; the fourth once
    assert sorted(producer.sent) == sorted([b"a", b"b", b"c", b"d", b"a", b"b", b"c"])


async def test_gives_up_after_the_attempts():
    producer = FakeProducer(failures=10**6, error=KafkaTimeoutError())
    with pytest.raises(KafkaTimeoutError):
        await _settle(producer, "t", await _pending(producer, [b"a"]), attempts=3)
    assert len(producer.sent) == 3


async def test_a_non_retriable_error_is_raised_at_once():
    producer = FakeProducer(failures=1, error=ValueError("bad"))
    with pytest.raises(ValueError):
        await _settle(producer, "t", await _pending(producer, [b"a"]))
    assert UnknownTopicOrPartitionError.retriable  # the kind of KafkaError that is retried

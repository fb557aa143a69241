"""worker/publish.py with a scripted producer: retries, backoff, acks handed to the committer."""
import asyncio

from worker.ingest import DeadLetter
from worker.metrics import WorkerMetrics
from worker.partition import PartitionState
from worker.publish import Backoff, Publisher


class ScriptedProducer:
    """send() returns a future that fails `failures` times, then succeeds."""

    def __init__(self, failures: int):
        self.failures = failures
        self.sent = []
        self.closed = False

    async def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers))
        fut = asyncio.get_running_loop().create_future()
        if len(self.sent) <= self.failures:
            fut.set_exception(RuntimeError("broker said no"))
        else:
            fut.set_result(None)
        return fut


def publisher(producer, backoff=Backoff(base_s=0.001, cap_s=0.004)):
    return Publisher(producer, metrics=WorkerMetrics(), backoff=backoff, closed=lambda p: p.closed)


async def until(cond, timeout=2.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.001)


def test_backoff_doubles_up_to_its_cap():
    b = Backoff(base_s=0.05, cap_s=2.0)
    assert [b.delay(a) for a in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert b.delay(1000) == 2.0


async def test_a_send_failing_n_times_is_retried_until_acked_and_only_then_done():
    producer = ScriptedProducer(failures=5)
    pub = publisher(producer)
    st = PartitionState("p0")
    st.offsets.add(3)
    acks = []
    await pub.send("fc", b"k", b"v", None, st, 3, on_ack=lambda: acks.append(1))
    await until(lambda: acks)
    assert len(producer.sent) == 6 and {s[2] for s in producer.sent} == {b"v"}  # same message each time
    assert acks == [1] and st.offsets.committable() == 4
    assert pub.metrics.publish_retries.labels(topic="fc")._value.get() == 5


async def test_offset_stays_uncommitted_while_retries_go_on():
    producer = ScriptedProducer(failures=10**6)
    pub = publisher(producer)
    st = PartitionState("p0")
    st.offsets.add(3)
    await pub.send("fc", b"k", b"v", None, st, 3)
    await until(lambda: len(producer.sent) >= 20)
    assert st.offsets.committable() == 3  # never skipped past a send that did not land
    producer.closed = True  # stop(): no more retries
    n = len(producer.sent)
    await asyncio.sleep(0.02)
    assert len(producer.sent) <= n + 1


async def test_dead_letter_carries_reason_headers_and_counts():
    producer = ScriptedProducer(failures=0)
    pub = publisher(producer)
    st = PartitionState(type("TP", (), {"topic": "bars", "partition": 2})())
    st.offsets.add(9)
    await pub.dead_letter("dlq", DeadLetter(st, 9, b"AAA", b"{bad", "bad_json", "no"))
    await until(lambda: st.offsets.outstanding() == 0)
    topic, key, value, headers = producer.sent[0]
    assert (topic, key, value) == ("dlq", b"AAA", b"{bad")
    h = dict(headers)
    assert h["error.reason"] == b"bad_json" and h["source.partition"] == b"2" and h["source.offset"] == b"9"
    assert pub.dead_letters == 1 and pub.metrics.dlq.labels(reason="bad_json")._value.get() == 1

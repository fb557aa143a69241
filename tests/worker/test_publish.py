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


# ------------------------------------------------------- records refused for good (issue 10, item 4)
import hashlib  # noqa: E402

from aiokafka.errors import MessageSizeTooLargeError  # noqa: E402

from worker import kafka  # noqa: E402


class SizeLimitedProducer:
    """Raises like aiokafka's send() (synchronously) for records over `limit` bytes, or fails
    their future like a broker with a smaller message.max.bytes would (`async_refusal`)."""

    def __init__(self, limit: int, async_refusal: bool = False):
        self.limit, self.async_refusal = limit, async_refusal
        self.sent, self.refused, self.closed = [], 0, False

    async def send(self, topic, key=None, value=None, headers=None):
        size = len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers or [])
        fut = asyncio.get_running_loop().create_future()
        if size > self.limit:
            self.refused += 1
            if not self.async_refusal:
                raise MessageSizeTooLargeError(f"{size} bytes")
            fut.set_exception(MessageSizeTooLargeError(f"{size} bytes"))
            return fut
        self.sent.append((topic, key, value, headers))
        fut.set_result(None)
        return fut


def _state():
    return PartitionState(type("TP", (), {"topic": "bars", "partition": 0})())


async def test_a_dead_letter_copy_too_large_goes_truncated_with_size_and_sha256():
    producer = SizeLimitedProducer(limit=kafka.DLQ_MAX_BYTES + 100)
    pub = publisher(producer)
    st = _state()
    st.offsets.add(5)
    big = b"x" * 10_000_000
    await pub.dead_letter("dlq", DeadLetter(st, 5, b"AAA", big, "oversized", "10000000 bytes > 4096"))
    await until(lambda: st.offsets.outstanding() == 0)
    assert producer.refused == 0 and len(producer.sent) == 1
    _, key, value, headers = producer.sent[0]
    h = dict(headers)
    assert key == b"AAA" and big.startswith(value) and 0 < len(value) < kafka.DLQ_MAX_BYTES
    assert h["source.truncated"] == b"1" and h["source.value_size"] == b"10000000"
    assert h["source.value_sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert h["error.reason"] == b"oversized" and st.offsets.committable() == 6


async def test_a_broker_refusing_the_copy_gets_a_smaller_one_and_the_partition_moves_on():
    producer = SizeLimitedProducer(limit=50_000, async_refusal=True)  # broker limit below ours
    pub = publisher(producer)
    st = _state()
    st.offsets.add(7)
    await pub.dead_letter("dlq", DeadLetter(st, 7, b"AAA", b"y" * 200_000, "oversized", "big"))
    await until(lambda: st.offsets.outstanding() == 0)
    assert producer.refused == 1 and len(producer.sent) == 1
    _, _, value, headers = producer.sent[0]
    h = dict(headers)
    assert len(value) < 4096 and h["source.value_size"] == b"200000" and b"MessageSizeTooLarge" in h["error.dlq_refused"]
    assert st.offsets.committable() == 8
    assert pub.metrics.publish_retries.labels(topic="dlq")._value.get() == 0  # refused, not retried


async def test_a_refused_forecast_sends_its_bar_to_the_dlq_instead():
    producer = SizeLimitedProducer(limit=400)
    pub = publisher(producer)
    st = _state()
    st.offsets.add(11)

    async def refused_forecast():
        it = type("It", (), {"partition": st, "offset": 11, "key": b"AAA", "value": b'{"bar":1}'})()
        await pub.send("fc", b"AAA", b"z" * 1000, None, st, 11, on_reject=pub._forecast_refused(it))

    await refused_forecast()
    await until(lambda: st.offsets.outstanding() == 0)
    assert [s[0] for s in producer.sent] == ["bars.dlq"]
    h = dict(producer.sent[0][3])
    assert h["error.reason"] == b"publish_rejected" and h["error.detail"].startswith(b"MessageSizeTooLargeError")
    assert st.offsets.committable() == 12


async def test_a_refused_copy_that_cannot_shrink_is_given_up_not_retried_forever():
    producer = SizeLimitedProducer(limit=10)
    pub = Publisher(producer, metrics=WorkerMetrics(), backoff=Backoff(0.001, 0.004), closed=lambda p: p.closed)
    st = _state()
    st.offsets.add(1)
    await pub.dead_letter("dlq", DeadLetter(st, 1, b"AAA", b"{bad", "bad_json", "no"))
    await until(lambda: st.offsets.outstanding() == 0)
    await asyncio.sleep(0.02)
    assert producer.refused == 2 and producer.sent == []  # the copy, then the cut-down copy
    assert pub.metrics.dlq.labels(reason="dlq_rejected")._value.get() == 1
    assert st.offsets.committable() == 2


async def test_a_send_that_gates_no_commit_takes_no_partition_state():
    """Shadow forecasts and their scores: state None, acked without any offset bookkeeping."""
    producer = ScriptedProducer(failures=2)
    pub = publisher(producer)
    acks = []
    await pub.send("fc.shadow", b"k", b"v", None, None, 0, on_ack=lambda: acks.append(1))
    await until(lambda: acks)
    assert acks == [1] and len(producer.sent) == 3


async def test_publishing_trouble_is_said_once_and_its_end_too(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="worker.publish")
    producer = ScriptedProducer(failures=12)  # three sends failing 4 times each, in turn
    pub = publisher(producer)
    st = PartitionState("p0")
    acks = []
    for offset in range(3):
        st.offsets.add(offset)
        await pub.send("fc", b"k", b"v", None, st, offset, on_ack=lambda: acks.append(1))
    await until(lambda: len(acks) == 3)
    assert [r.getMessage() for r in caplog.records] == [
        "publishing to fc fails (RuntimeError('broker said no')): retrying every send until the broker "
        "acknowledges it",
        "publishing works again (12 failed sends were retried)"]

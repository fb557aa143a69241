"""worker/pipeline/publish.py with a scripted producer: retries, backoff, acks handed to the committer."""
import asyncio

from worker.pipeline.ingest import DeadLetter
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.partition import PartitionState
from worker.pipeline.publish import Backoff, Publisher


def publisher(producer, backoff=Backoff(base_s=0.001, cap_s=0.004)):
    return Publisher(producer, metrics=WorkerMetrics(), backoff=backoff, closed=lambda p: p.closed)


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


from worker.adapters import kafka  # noqa: E402
from tests.worker.producers import ScriptedProducer, SizeLimitedProducer, until


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


# ------------------------------------------------- a batch's forecasts as record batches (issue 25)
import datetime as _dt  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

from worker.contracts import events  # noqa: E402
from worker.pipeline.batcher import Batch  # noqa: E402
from worker.config import ModelRef  # noqa: E402
from worker.pipeline.ingest import Ready  # noqa: E402
from worker.pipeline.publish import ForecastDoc  # noqa: E402

_DOC_SETTINGS = SimpleNamespace(interval_td=_dt.timedelta(minutes=5), worker_id="w1", temperature=1.0, top_k=0,
                                top_p=0.9, sample_count=1, lookback=4, pred_len=2)


class BatchingProducer(ScriptedProducer):
    """Takes record batches as aiokafka's producer does (create_batch, send_batch, the
    partitioner): two partitions, at most `capacity` records a batch; the batches numbered in
    `failing` fail (their records are then sent one by one through send())."""

    def __init__(self, capacity=3, failing=()):
        super().__init__(failures=0)
        self.capacity, self.failing, self.batches = capacity, set(failing), []
        self._partitioner = None  # not aiokafka's default one: no partition cache

    async def partitions_for(self, topic):
        return {0, 1}

    def _partition(self, topic, partition, key, value, serialized_key, serialized_value):
        return key[-1] % 2

    def create_batch(self):
        capacity, records = self.capacity, []

        class Builder:
            def append(self, *, key, value, timestamp):
                if len(records) >= capacity:
                    return None
                records.append((key, value))
                return True
        b = Builder()
        b.records = records
        return b

    async def send_batch(self, batch, topic, *, partition):
        self.batches.append((topic, partition, list(batch.records)))
        fut = asyncio.get_running_loop().create_future()
        if len(self.batches) in self.failing:
            fut.set_exception(RuntimeError("broker said no"))
        else:
            fut.set_result(None)
        return fut


def _forecast_batch(n):
    st = PartitionState(type("TP", (), {"topic": "bars", "partition": 0})())
    t = _dt.datetime(2024, 1, 2, 9, 35)
    items = []
    for i in range(n):
        bar = events.Bar(f"S{i}", t.isoformat(), t, 10.0, 10.5, 9.5, 10.0, 100.0, None)
        items.append(Ready(bar, st, i, bar.symbol.encode(), b"{}", kafka_ts=1000.0, received=1000.25,
                           values=np.full((4, 6), 10.0), times=np.array([t] * 4, dtype="datetime64[s]"),
                           horizon=[t + _dt.timedelta(minutes=5 * k) for k in (1, 2)]))
        st.offsets.add(i)
    fc = SimpleNamespace(mean=np.full((2, 6), 10.1), quantiles={}, paths=None)
    ref = ModelRef("loc", "m", "v1")
    return st, Batch(items, [1000.5] * n, 1000.6, 1000.9, [(fc, ref)] * n)


def _comparable(value: bytes) -> dict:
    doc = events.loads(value)
    doc.pop("produced_at")
    doc["latency_ms"].pop("total")  # both run up to the moment each was built
    return doc


async def test_a_batch_of_forecasts_goes_out_as_record_batches_and_every_ack_counts():
    producer = BatchingProducer(capacity=3)
    pub = Publisher(producer, metrics=WorkerMetrics(), forecast_doc=ForecastDoc(_DOC_SETTINGS))
    st, batch = _forecast_batch(8)
    await pub.forecasts_of("fc", batch)
    await until(lambda: st.offsets.outstanding() == 0)
    assert producer.sent == []  # nothing one by one
    assert [(p, len(r)) for _, p, r in producer.batches] == [(0, 3), (0, 1), (1, 3), (1, 1)]
    keys = [k for _, p, r in producer.batches for k, _ in r]
    assert sorted(keys) == sorted(f"S{i}".encode() for i in range(8))
    assert all(int(k[1:]) % 2 == p for _, p, r in producer.batches for k, _ in r)  # the partitioner's choice
    assert pub.forecasts == 8 and pub.metrics.forecasts._value.get() == 8
    # The same documents as the one-record-at-a-time path builds.
    single = ScriptedProducer(failures=0)
    one = Publisher(single, metrics=WorkerMetrics(), forecast_doc=ForecastDoc(_DOC_SETTINGS))
    st1, batch1 = _forecast_batch(8)
    await one.forecasts_of("fc", batch1)
    await until(lambda: st1.offsets.outstanding() == 0)
    by_key = {k: _comparable(v) for _, _, r in producer.batches for k, v in r}
    assert by_key == {k: _comparable(v) for _, k, v, _ in single.sent}


async def test_a_failed_record_batch_sends_its_forecasts_again_one_by_one():
    producer = BatchingProducer(capacity=3, failing={1})
    pub = publisher(producer)
    pub.forecast_doc = ForecastDoc(_DOC_SETTINGS)
    st, batch = _forecast_batch(6)
    await pub.forecasts_of("fc", batch)
    await until(lambda: st.offsets.outstanding() == 0)
    failed = [k for k, _ in producer.batches[0][2]]
    assert sorted(k for _, k, _, _ in producer.sent) == sorted(failed)  # those, and only those, again
    assert pub.forecasts == 6


async def test_publishing_trouble_is_said_once_and_its_end_too(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="worker.pipeline.publish")
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

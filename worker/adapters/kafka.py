"""Kafka plumbing shared by the worker and the replay tool (aiokafka).

Settings that matter with the embedded Tansu broker: producers use acks=all without
idempotence (Tansu has neither idempotent producers nor transactions), and positions
are never looked up by time or via ListOffsets (unreliable there): lag comes from
the fetch high-watermark and re-reads start from offsets the worker recorded itself.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as aiokafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata

from kronos_rt_client.security import client_kwargs

log = logging.getLogger(__name__)


# -- aiokafka internals, in one place --------------------------------------------------------
# The worker needs five things aiokafka has no public API for. Each is used only here, and
# tests/worker/adapters/test_kafka.py fails if the pinned aiokafka changes them.

# A commit during a rebalance can fail with an AssertionError from inside aiokafka's
# coordinator (not a KafkaError); either way the next commit retries.
COMMIT_ERRORS = (KafkaError, AssertionError)


async def commit(consumer: AIOKafkaConsumer, offsets: dict) -> None:
    """Commit tp -> (offset, metadata) for the consumer's group."""
    await consumer.commit({tp: OffsetAndMetadata(o, meta) for tp, (o, meta) in offsets.items()})


async def fetch_committed(consumer: AIOKafkaConsumer, tps) -> dict:
    """tp -> (offset, metadata) committed by the group, with the metadata (public
    `consumer.committed()` returns the offset only)."""
    got = await consumer._coordinator.fetch_committed_offsets(list(tps))
    return {tp: (om.offset, om.metadata) for tp, om in got.items() if om is not None}


async def answers(consumer: AIOKafkaConsumer, timeout_s: float = 3.0) -> bool:
    """Does the cluster answer a metadata request within timeout_s? (A frozen broker keeps its
    connections open and the consumer's fetches just return nothing: only a request tells.)"""
    try:
        await asyncio.wait_for(consumer._client.fetch_all_metadata(), timeout_s)
        return True
    except (KafkaError, asyncio.TimeoutError, OSError):
        return False


def rejoin(consumer: AIOKafkaConsumer) -> None:
    """Ask the group coordinator for a new assignment now (revoke, join, sync), as aiokafka
    does itself when a heartbeat says the group is rebalancing."""
    consumer._coordinator.request_rejoin()


def producer_closed(producer: AIOKafkaProducer) -> bool:
    """True once stop() began: a failed send is then not retried."""
    return bool(producer._closed)


_PARTITIONS: dict[tuple[str, int], dict[bytes, int]] = {}  # (topic, partition count) -> key -> partition
_PARTITIONS_MAX = 1 << 20


async def send_many(producer: AIOKafkaProducer, topic: str, records: list) -> list:
    """Send (key, value) records of one topic as record batches (create_batch/send_batch):
    one Python call per record instead of a whole producer.send each (future, metadata
    wait, size estimate, partitioner), which for a burst of thousands of forecasts costs
    more than building them. Each record goes to the partition producer.send would give its
    key (the producer's own partitioner: aiokafka has no public way to ask which).
    Returns [(future, indices of the records it carries)], in send order. Never raises:
    records a batch cannot take even alone, and all not queued when something failed
    (no metadata yet, the producer stopping), come back with future None: the caller sends
    those one by one (producer.send, with its own error handling)."""
    out: list = []
    queued: set[int] = set()
    try:
        count = len(await producer.partitions_for(topic))  # metadata known, as producer.send waits for it
        # A keyed record's partition under the default partitioner depends on the key and the
        # partition count only; its murmur2 is pure Python (~5 us): remembered per key.
        cache = _PARTITIONS.setdefault((topic, count), {}) if isinstance(producer._partitioner, DefaultPartitioner) \
            else None
        if cache is not None and len(cache) > _PARTITIONS_MAX:
            cache.clear()
        parts: dict[int, list[int]] = {}
        for i, (key, value) in enumerate(records):
            partition = None if cache is None or key is None else cache.get(key)
            if partition is None:
                partition = producer._partition(topic, None, key, value, key, value)
                if cache is not None and key is not None:
                    cache[key] = partition
            parts.setdefault(partition, []).append(i)
        for partition, indices in parts.items():
            batch, carried = producer.create_batch(), []
            for i in indices:
                key, value = records[i]
                if batch.append(key=key, value=value, timestamp=None) is None:
                    if carried:  # full: this one starts the next batch
                        out.append((await producer.send_batch(batch, topic, partition=partition), carried))
                        queued.update(carried)
                        batch, carried = producer.create_batch(), []
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        continue  # too large for any batch: sent alone below
                carried.append(i)
            if carried:
                out.append((await producer.send_batch(batch, topic, partition=partition), carried))
                queued.update(carried)
    except Exception as err:  # noqa: BLE001 - the records not queued go one by one, not lost
        log.warning("sending %d records to %s as batches failed (%r): the rest go one by one",
                    len(records) - len(queued), topic, err)
    rest = [i for i in range(len(records)) if i not in queued]
    if rest:
        out.append((None, rest))
    return out


# -- connecting ----------------------------------------------------------------------------

def make_consumer(brokers: str, *topics, security=None, **options) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **client_kwargs(brokers, security), **options)


# How long a revocation waits for the revoked partitions' copies in flight to be acknowledged
# (never longer than --drain-timeout-s). The whole group waits for the slowest member to
# rejoin, and a copy not acknowledged in time is only forecast again by the next owner (a
# duplicate, never a loss), so a rebalance does not wait out a broker in trouble.
REVOKE_DRAIN_S = 2.0


def revoke_drain_s(settings) -> float:
    return min(settings.drain_timeout_s, REVOKE_DRAIN_S)


def group_consumer(settings) -> AIOKafkaConsumer:
    """The worker's consumer-group member, as its settings say (not started, not subscribed)."""
    s = settings
    return make_consumer(
        s.brokers, security=s.kafka_security, group_id=s.group, client_id=f"kronos-rt-{s.worker_id}",
        enable_auto_commit=False, auto_offset_reset="earliest",
        # Heartbeats are how a member hears that the group rebalances: a tenth of the session
        # (Kafka's advice is at most a third) lets the others follow a rebalance sooner.
        session_timeout_ms=s.session_timeout_ms, heartbeat_interval_ms=max(100, s.session_timeout_ms // 10),
        # Static membership: a restart within the session timeout rejoins without a rebalance.
        group_instance_id=s.group_instance_id or None,
        # How long the broker holds a rebalance for members to rejoin: room for a revocation's
        # drain, and no more: a member that does not rejoin in time (frozen, or stuck) then
        # no longer stalls the whole group.
        rebalance_timeout_ms=s.session_timeout_ms + int(revoke_drain_s(s) * 1000),
        # Kafka answers a fetch as soon as a bar is there; some brokers (Tansu) hold it for
        # the whole wait, which then adds to every bar's latency.
        max_partition_fetch_bytes=1 << 20, fetch_max_wait_ms=s.fetch_max_wait_ms,
    )


def make_admin(brokers: str, security=None, **options) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_kwargs(brokers, security), **options)


def make_producer(brokers: str, client_id: str = "kronos-rt", linger_ms: int = 1, security=None) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_kwargs(brokers, security), client_id=client_id, acks="all", enable_idempotence=False,
        linger_ms=linger_ms, max_batch_size=1 << 20, max_request_size=4 << 20,
    )


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        ("error.reason", reason.encode()),
        ("error.detail", detail.encode("utf-8", "replace")[:1024]),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
    ]


# Largest dead-letter record sent whole: Kafka's default message.max.bytes (1 MiB) less room
# for the record's framing. A bigger poison message (10 MB of garbage) goes as a truncated copy.
DLQ_MAX_BYTES = 1_000_000
DLQ_MAX_KEY_BYTES = 1024


def dlq_record(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
               max_bytes: int = DLQ_MAX_BYTES) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of a dead-letter copy that fits in max_bytes. A copy too large
    keeps its first bytes and says so: source.truncated, and the original's size and sha256
    (source.value_size/value_sha256, source.key_size/key_sha256) to find it by."""
    import hashlib

    def size(k, v, h):
        return len(k or b"") + len(v or b"") + sum(len(n) + len(b) + 8 for n, b in h)

    if size(key, value, headers) <= max_bytes:
        return key, value, headers
    headers = list(headers) + [("source.truncated", b"1")]
    if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
        headers += [("source.key_size", str(len(key)).encode()),
                    ("source.key_sha256", hashlib.sha256(key).hexdigest().encode())]
        key = key[:DLQ_MAX_KEY_BYTES]
    if value is not None:
        headers += [("source.value_size", str(len(value)).encode()),
                    ("source.value_sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:max(0, max_bytes - size(key, b"", headers))]
    return key, value, headers


# Send errors that no retry can fix: the record itself is refused (too large for the producer
# or the broker, or not bytes). Everything else (timeouts, lost leaders, a broker away) is retried.
REJECTED_SEND_ERRORS = (
    aiokafka_errors.MessageSizeTooLargeError, aiokafka_errors.RecordTooLargeError,
    aiokafka_errors.RecordListTooLargeError, aiokafka_errors.CorruptRecordException,
    aiokafka_errors.UnsupportedForMessageFormatError, AssertionError, TypeError, ValueError,
)


def send_rejected(exc: BaseException) -> bool:
    return isinstance(exc, REJECTED_SEND_ERRORS)


async def topic_partitions(brokers: str, topics: list[str] | None = None, security=None) -> dict[str, int]:
    """Existing topics -> partition count (only `topics` if given)."""
    admin = make_admin(brokers, security)
    await admin.start()
    try:
        described = await admin.describe_topics(topics) if topics else await admin.describe_topics()
    finally:
        await admin.close()
    out = {}
    for t in described:
        if t.get("error_code", 0) == 0 and t.get("partitions"):
            out[t["topic"]] = len(t["partitions"])
    return out


async def ensure_topics(brokers: str, topics: dict[str, int], security=None) -> list[str]:
    """Create the topics (name -> partitions) that do not exist yet; returns those created."""
    admin = make_admin(brokers, security)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if not missing:
            return []
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            response = None  # another worker won the race
        # Per-topic errors come back in the response rather than as exceptions.
        for item in getattr(response, "topic_errors", ()):
            name, code = item[0], item[1]
            if code not in (0, TopicAlreadyExistsError.errno):
                message = item[2] if len(item) > 2 else ""
                raise RuntimeError(f"creating topic {name!r} failed: error {code} {message}")
    finally:
        await admin.close()
    # Metadata for a new topic reaches clients a moment later.
    for _ in range(50):
        if set(topics) <= set(await topic_partitions(brokers, list(topics), security)):
            break
        await asyncio.sleep(0.1)
    return [t.name for t in missing]


async def read_range(brokers: str, tps: list, *, start: dict | None = None, end: dict | None = None,
                     timeout_s: float = 30.0, client_id: str = "kronos-rt-reader", security=None) -> AsyncIterator:
    """The one bounded reader: messages of the partitions `tps` from `start` (tp -> offset,
    default the log start) up to `end` (tp -> offset, exclusive; default the high-watermark
    seen at the first fetch of each partition, so messages arriving meanwhile are left out).
    Read outside any consumer group, so a group's assignment and commits are untouched; the
    end comes from fetch high-watermarks, never ListOffsets (unreliable on some brokers)."""
    start, end = dict(start or {}), dict(end or {})
    tps = [tp for tp in tps if end.get(tp, 1) > start.get(tp, 0)]
    if not tps:
        return
    consumer = make_consumer(brokers, security=security, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", client_id=client_id)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp, 0))  # below the log start: reset to it (earliest)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=200, max_records=5000)
            for tp in tps:
                if tp not in end and consumer.highwater(tp) is not None:
                    end[tp] = consumer.highwater(tp)
            for tp, msgs in batch.items():
                for msg in msgs:
                    if tp in end and msg.offset < end[tp] and msg.offset >= start.get(tp, 0):
                        yield msg
            if len(end) == len(tps) and all([await consumer.position(tp) >= end[tp] for tp in tps]):
                return
            if loop.time() > deadline:
                raise TimeoutError(f"reading {sorted(str(tp) for tp in tps)} did not reach its end in "
                                   f"{timeout_s}s (ends known for {len(end)}/{len(tps)} partitions)")
    finally:
        await consumer.stop()


async def read_topic(brokers: str, topic: str, *, timeout_s: float = 60.0, client_id: str = "kronos-rt-reader",
                     security=None) -> AsyncIterator:
    """Every message of `topic` up to the high-watermarks seen at the start (read_range over
    all its partitions). A missing topic is an error, checked with list_topics first:
    describing a missing topic auto-creates it on brokers that allow that (Tansu does), and
    a typo would then read as an empty topic."""
    admin = make_admin(brokers, security, client_id=client_id)
    await admin.start()
    try:
        described = await admin.describe_topics([topic]) if topic in await admin.list_topics() else []
    finally:
        await admin.close()
    n_parts = next((len(t["partitions"]) for t in described
                    if t.get("error_code", 0) == 0 and t.get("partitions")), 0)
    if not n_parts:
        raise RuntimeError(f"topic {topic!r} does not exist on {brokers}")
    async for msg in read_range(brokers, [TopicPartition(topic, p) for p in range(n_parts)], timeout_s=timeout_s,
                                client_id=client_id, security=security):
        yield msg


def read_partition(brokers: str, tp: TopicPartition, start: int, end: int, timeout_s: float = 30.0,
                   security=None) -> AsyncIterator:
    """Messages of one partition with start <= offset < end (window rebuilds)."""
    return read_range(brokers, [tp], start={tp: start}, end={tp: end}, timeout_s=timeout_s,
                      client_id="kronos-rt-rebuild", security=security)


async def stop_all(*clients) -> None:
    """Stop each client (None: skipped), every one even if stopping another fails or this
    task is cancelled meanwhile (Ctrl-C): a client left unstopped keeps sockets and says so
    at exit. A cancellation is re-raised once all are stopped."""
    cancelled = None
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.shield(client.stop())
        except asyncio.CancelledError as exc:
            cancelled = exc
            try:  # the shielded stop goes on: let it finish
                await client.stop()
            except BaseException:
                log.exception("stopping %s", type(client).__name__)
        except Exception:
            log.exception("stopping %s", type(client).__name__)
    if cancelled is not None:
        raise cancelled

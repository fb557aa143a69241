"""No single message may stop its partition.

Whatever goes wrong while one message is handled (a bug, a value nothing foresaw) sends
that message to the dead-letter topic with reason `internal_error` and the exception class
in its detail, and the partition moves on. Failures of the infrastructure (Redis or the
broker away, the network) are not the message's fault: they propagate, so the worker waits
them out and handles the message again instead of dead-lettering every bar of an outage.

Two kinds of infrastructure failure, told apart here once for every caller:
- an outage (`is_outage`): Redis gone, timing out, out of memory, read-only, loading;
  a Sentinel or Cluster failover under way; the network. It ends by itself: the fetch loop pauses every partition and waits, as
  long as it takes (worker/pipeline/recovery.py: ride_out).
- any other Redis or Kafka reply error (a script failing, a key of the wrong type): Redis
  answers, so waiting for it proves nothing. The fetch loop retries the message with a
  growing pause, REPLY_RETRIES times, then dead-letters it (`infrastructure_error`): the
  bar is in the DLQ, not lost, and its partition is not stuck behind it.
"""
from __future__ import annotations

import asyncio
import logging

from worker.contracts import events

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"
INFRASTRUCTURE_ERROR = "infrastructure_error"
REPLY_RETRIES = 5  # a reply error on one message: tries before it goes to the DLQ


def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError, TimeoutError]
    try:
        from redis.exceptions import RedisClusterException, RedisError  # any Redis reply error hits every message alike
        errors += [RedisError, RedisClusterException]
    except ImportError:
        pass
    try:
        from aiokafka.errors import KafkaError
        errors.append(KafkaError)
    except ImportError:
        pass
    return tuple(errors)


def _outage_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError, TimeoutError]  # the network
    try:
        from redis.exceptions import (
            BusyLoadingError, ClusterDownError, ConnectionError as RedisConnectionError, NoScriptError,
            OutOfMemoryError, ReadOnlyError, RedisClusterUnreachableError, SlotNotCoveredError,
            TimeoutError as RedisTimeoutError, TryAgainError,
        )
        # Gone or restarting, loading its data, out of memory, a replica read-only after a failover;
        # a Cluster with a master down or failing over (CLUSTERDOWN, MASTERDOWN, TRYAGAIN, a slot
        # nobody serves yet). MasterNotFoundError (no sentinel names a primary) is a ConnectionError.
        # NOSCRIPT: a pipeline met a Cluster node that has not had our scripts yet, a replica
        # promoted during the call; the next attempt loads them (worker/adapters/redis_connect.py).
        errors += [RedisConnectionError, RedisTimeoutError, BusyLoadingError, OutOfMemoryError, ReadOnlyError,
                   ClusterDownError, TryAgainError, SlotNotCoveredError, RedisClusterUnreachableError, NoScriptError]
    except ImportError:
        pass
    return tuple(errors)


INFRASTRUCTURE_ERRORS = _infrastructure_errors()
OUTAGE_ERRORS = _outage_errors()


def is_infrastructure(exc: BaseException) -> bool:
    return isinstance(exc, INFRASTRUCTURE_ERRORS)


def is_outage(exc: BaseException) -> bool:
    """An infrastructure failure that ends by itself: waited out, however long it lasts."""
    return isinstance(exc, OUTAGE_ERRORS)


def reply_retry_delay(attempt: int, base_s: float = 0.1, cap_s: float = 5.0) -> float:
    """Pause before retry `attempt` (1, 2, ...) of a message that met a reply error."""
    return min(cap_s, base_s * 2 ** (attempt - 1))


def describe(exc: BaseException) -> str:
    """'ClassName: message', bounded (a DLQ header holds it)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


def as_invalid(exc: BaseException) -> events.InvalidEvent:
    """An unexpected exception while parsing one message, as the reason it goes to the DLQ."""
    return events.InvalidEvent(INTERNAL_ERROR, describe(exc))


def log_internal(where: str, topic, partition, offset, exc: BaseException) -> None:
    # One line with the traceback: this is a bug or a case nobody foresaw, worth reading.
    log.error("%s failed on %s[%s]@%s; the message goes to the DLQ as internal_error",
              where, topic, partition, offset, exc_info=exc)

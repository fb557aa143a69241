"""No single message may stop its partition.

Whatever goes wrong while one message is handled (a bug, a value nothing foresaw) sends
that message to the dead-letter topic with reason `internal_error` and the exception class
in its detail, and the partition moves on. Failures of the infrastructure (Redis or the
broker away, the network) are not the message's fault: they propagate, so the worker waits
them out and handles the message again instead of dead-lettering every bar of an outage.
"""
from __future__ import annotations

import asyncio
import logging

from worker import events

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"


def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError, TimeoutError]
    try:
        from redis.exceptions import RedisError  # any Redis reply error hits every message alike
        errors.append(RedisError)
    except ImportError:
        pass
    try:
        from aiokafka.errors import KafkaError
        errors.append(KafkaError)
    except ImportError:
        pass
    return tuple(errors)


INFRASTRUCTURE_ERRORS = _infrastructure_errors()


def is_infrastructure(exc: BaseException) -> bool:
    return isinstance(exc, INFRASTRUCTURE_ERRORS)


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

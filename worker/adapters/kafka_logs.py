"""Library log lines for expected trouble go to DEBUG: the worker says each state change once.

While a broker is away aiokafka logs every retry at ERROR or WARNING (a worker waiting 5 s for
a broker printed 9 lines), and every expected step of a rebalance after a freeze (its session
expired, its commits refused, "will rejoin") at ERROR too. The worker already says each of
these state changes once, in its own words: the broker waiting and back (worker/ops/health.py),
Redis away and back, "rebuilt N windows" (worker/pipeline/recovery.py), partitions assigned and revoked
(worker/pipeline/ownership.py), a commit the group refused (worker/pipeline/commit.py), publishing failing and
working again (worker/pipeline/publish.py). `quiet_library_logs()` turns exactly those aiokafka lines
(matched by their format strings) into DEBUG records; anything else aiokafka logs, a real error
included, keeps its level.
"""
from __future__ import annotations

import logging

# logger name -> format strings of lines that only say "retrying" or "the group moves on".
EXPECTED: dict[str, frozenset[str]] = {
    "aiokafka": frozenset({
        'Unable connect to "%s:%s": %s',
        'Unable to request metadata from "%s:%s": %s',
        "Unable to request metadata from node with id %s: %r",
        "Unable to update metadata from %s",
        "Unable connect to node with id %s: %s",
    }),
    "aiokafka.consumer.group_coordinator": frozenset({
        "Error sending %s to node %s [%s] -- marking coordinator dead",
        "Marking the coordinator dead (node %s)for group %s.",
        "Group Coordinator Request failed: %s",
        "Heartbeat session expired - marking coordinator dead",
        "Heartbeat send request failed: %s. Will retry.",
        "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
        "Heartbeat failed for group %s because it is rebalancing",
        "Heartbeat failed for group %s: generation id is not  current.",
        "Heartbeat failed: local member_id was not recognized; resetting and re-joining group",
        "OffsetCommit failed for group %s due to group error (%s), will rejoin",
        "OffsetCommit failed before join, ignoring: %s",
        "LeaveGroup request failed: %s",
    }),
    "aiokafka.consumer.fetcher": frozenset({
        "Failed fetch messages from %s: %s",
        "Failed fetch offsets from %s: %s",
    }),
    "aiokafka.producer.sender": frozenset({
        "Cannot send %r to %s: %r",
        "Could not send %r: %r",
        "Got error produce response: %s",
    }),
}


class Demote(logging.Filter):
    """Turns the records whose format string is in `expected` into DEBUG records (a logger
    filter runs before the handlers' level checks, so they then show only at DEBUG)."""

    def __init__(self, expected: frozenset[str]):
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and record.msg in self.expected and not record.exc_info:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # Dropped here unless someone asked for the library's DEBUG lines.
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_library_logs() -> None:
    """Install the filters (once; calling again changes nothing)."""
    for name, expected in EXPECTED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, Demote) for f in logger.filters):
            logger.addFilter(Demote(expected))

"""At-least-once commits: what to commit for each partition, and with which metadata.

A partition's offset moves past a bar only once everything that bar caused is
acknowledged (PartitionOffsets). The commit metadata carries `rebuild_from`, the
oldest offset still in any of the partition's windows: a worker that inherits the
partition and finds Redis empty re-reads the bar topic from there. Brokers that
drop commit metadata (Tansu) get the same position from the previous owner's
partition state only while it lives; otherwise the heir re-reads from offset 0.
"""
from __future__ import annotations

import json
import logging

from worker.adapters import kafka
from worker.pipeline.partition import PartitionState

log = logging.getLogger(__name__)


def encode_metadata(rebuild_from: int | None, worker_id: str) -> str:
    return json.dumps({"rebuild_from": rebuild_from, "worker": worker_id})


def decode_rebuild_from(metadata) -> int | None:
    """The re-read position a previous owner recorded, None when it recorded none."""
    try:
        start = json.loads(metadata).get("rebuild_from")
    except (TypeError, ValueError, AttributeError):
        return None
    return int(start) if isinstance(start, int) and start >= 0 else None


def inherited_floor(committed_offset: int | None, metadata) -> int | None:
    """Where a rebuild of a newly assigned partition may have to start: the recorded
    position, or 0 when the group committed without one; None when nothing was committed."""
    if committed_offset is None or committed_offset < 0:
        return None
    start = decode_rebuild_from(metadata)
    return 0 if start is None else start


def plan(states: list[PartitionState], worker_id: str) -> dict:
    """tp -> (offset, metadata) for each partition whose committable offset moved."""
    out = {}
    for st in states:
        c = st.offsets.committable()
        if c is None or (st.committed is not None and c <= st.committed):
            continue
        out[st.tp] = (c, encode_metadata(st.rebuild_from(), worker_id))
    return out


class Committer:
    def __init__(self, consumer, worker_id: str):
        self.consumer = consumer
        self.worker_id = worker_id
        self.refused = False  # the last commit failed: said once, until one succeeds again

    async def commit(self, states: list[PartitionState]) -> bool:
        """Commit what `plan` says; False when the broker refused (the next tick retries)."""
        planned = plan(states, self.worker_id)
        if not planned:
            return True
        try:
            await kafka.commit(self.consumer, planned)
        except kafka.COMMIT_ERRORS as err:  # e.g. mid-rebalance
            # Expected after a freeze or during a rebalance: one line until commits work again.
            if not self.refused:
                log.info("commits refused (%s): the group is rebalancing or went on without this worker; "
                         "what is not committed is re-read by the partitions' next owners", _first_line(err))
            self.refused = True
            return False
        if self.refused:
            log.info("commits accepted again")
            self.refused = False
        by_tp = {st.tp: st for st in states}
        for tp, (offset, _) in planned.items():
            by_tp[tp].committed = offset
            if by_tp[tp].runahead is not None:
                by_tp[tp].runahead.committed(offset)
        return True


def _first_line(err: BaseException) -> str:
    """The error's class and the first line of its message (aiokafka's run over several)."""
    text = str(err.args[0] if err.args else "").strip().splitlines()
    return type(err).__name__ + (f": {text[0].strip()}" if text else "")

"""Which Kafka offset of each partition is safe to commit.

At-least-once means a partition's committed offset may only move past a bar once
everything that bar caused (its forecast, or its dead-letter copy) has been
acknowledged by the broker. Work finishes out of order (batches, retries), so the
tracker keeps the set of unfinished offsets per partition: the committable offset
is the lowest unfinished one, or one past the highest offset seen when nothing
is pending. Pure bookkeeping: no Kafka or asyncio here.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Hashable


class _Partition:
    __slots__ = ("pending", "heap", "next_offset")

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}  # offset -> unfinished tasks for it
        self.heap: list[int] = []           # pending offsets; finished ones are removed lazily
        self.next_offset: int | None = None  # one past the highest offset seen

    def committable(self) -> int | None:
        while self.heap and self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        if self.heap:
            return self.heap[0]
        return self.next_offset


class OffsetTracker:
    """Per-partition in-flight offsets. `tp` is any hashable partition key."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, _Partition] = defaultdict(_Partition)

    def seen(self, tp: Hashable, offset: int) -> None:
        """Record that `offset` was read and needs nothing more (or its work was just added)."""
        part = self._parts[tp]
        if part.next_offset is None or offset + 1 > part.next_offset:
            part.next_offset = offset + 1

    def add(self, tp: Hashable, offset: int) -> None:
        """Start one unit of work for `offset`; it blocks commits at or past it until done()."""
        part = self._parts[tp]
        count = part.pending.get(offset, 0)
        if count == 0:
            heapq.heappush(part.heap, offset)
        part.pending[offset] = count + 1
        self.seen(tp, offset)

    def done(self, tp: Hashable, offset: int) -> None:
        """Finish one unit of work added for `offset`. Unknown offsets (e.g. after reset) are ignored."""
        part = self._parts.get(tp)
        if part is None or offset not in part.pending:
            return
        if part.pending[offset] <= 1:
            del part.pending[offset]
        else:
            part.pending[offset] -= 1

    def committable(self, tp: Hashable) -> int | None:
        """The offset to commit for `tp` (Kafka semantics: the next offset to read), None if nothing seen."""
        part = self._parts.get(tp)
        return None if part is None else part.committable()

    def outstanding(self, tp: Hashable | None = None) -> int:
        """Unfinished offsets of one partition, or of all partitions."""
        if tp is not None:
            part = self._parts.get(tp)
            return 0 if part is None else len(part.pending)
        return sum(len(p.pending) for p in self._parts.values())

    def partitions(self) -> list[Hashable]:
        return list(self._parts)

    def reset(self, tp: Hashable) -> None:
        """Forget a partition (it was revoked; its next owner starts from the committed offset)."""
        self._parts.pop(tp, None)

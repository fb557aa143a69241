"""Which Kafka offset of a partition is safe to commit.

At-least-once means a partition's committed offset may only move past a bar once
everything that bar caused (its forecast, or its dead-letter copy) has been
acknowledged by the broker. Work finishes out of order (batches, retries), so each
partition keeps the set of unfinished offsets: the committable offset is the lowest
unfinished one, or one past the highest offset seen when nothing is pending. Pure
bookkeeping: no Kafka or asyncio here.
"""
from __future__ import annotations

import heapq


class PartitionOffsets:
    """In-flight offsets of one partition."""

    __slots__ = ("pending", "heap", "next_offset")

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}  # offset -> unfinished tasks for it
        self.heap: list[int] = []           # pending offsets; finished ones are removed lazily
        self.next_offset: int | None = None  # one past the highest offset seen

    def seen(self, offset: int) -> None:
        """Record that `offset` was read and needs nothing more (or its work was just added)."""
        if self.next_offset is None or offset + 1 > self.next_offset:
            self.next_offset = offset + 1

    def add(self, offset: int) -> None:
        """Start one unit of work for `offset`; it blocks commits at or past it until done()."""
        count = self.pending.get(offset, 0)
        if count == 0:
            heapq.heappush(self.heap, offset)
        self.pending[offset] = count + 1
        self.seen(offset)

    def done(self, offset: int) -> None:
        """Finish one unit of work added for `offset`. Unknown offsets are ignored."""
        count = self.pending.get(offset)
        if count is None:
            return
        if count <= 1:
            del self.pending[offset]
        else:
            self.pending[offset] = count - 1

    def committable(self) -> int | None:
        """The offset to commit (Kafka semantics: the next offset to read), None if nothing seen."""
        while self.heap and self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        if self.heap:
            return self.heap[0]
        return self.next_offset

    def outstanding(self) -> int:
        return len(self.pending)

"""How far a worker may run ahead of its committed offset, per symbol.

After a failover the next owner re-reads a partition from the committed offset, and each
re-read bar is forecast on its own window: the symbol's window in Redis cut at the bar's
time. Redis keeps `lookback + REDELIVERY_SLACK` bars per symbol, so the cut window still
holds the full lookback only while the dead worker had stored at most REDELIVERY_SLACK
bars of that symbol past the commit. `RunAhead` counts, per symbol, the bars handled at or
past the committed offset; the fetch loop waits (the partition paused) before handling a
bar whose symbol reached the limit, until commits catch up. At-least-once then holds
however far a fast replay or a slow model let the queue grow, and however a worker ends.
Pure bookkeeping: no Kafka, Redis or asyncio here.
"""
from __future__ import annotations

from collections import Counter, deque


class RunAhead:
    """Bars handled at or past the committed offset of one partition, counted per symbol."""

    __slots__ = ("limit", "_handled", "_count")

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"run-ahead limit must be >= 1, got {limit}")
        self.limit = limit
        self._handled: deque[tuple[int, str]] = deque()  # (offset, symbol) in handling order
        self._count: Counter[str] = Counter()

    def handled(self, offset: int, symbol: str) -> None:
        """A bar of `symbol` at `offset` reached Redis."""
        self._handled.append((offset, symbol))
        self._count[symbol] += 1

    def committed(self, offset: int | None) -> None:
        """The partition's committed offset is now `offset` (the next one to read)."""
        if offset is None:
            return
        # Offsets of one partition are handled in increasing order (a re-read restarts at the commit).
        while self._handled and self._handled[0][0] < offset:
            _, sym = self._handled.popleft()
            self._count[sym] -= 1
            if self._count[sym] <= 0:
                del self._count[sym]

    def ahead(self, symbol: str) -> int:
        return self._count.get(symbol, 0)

    def full(self, symbol: str) -> bool:
        """Handling one more bar of `symbol` now could leave a re-read bar short of its window."""
        return self._count.get(symbol, 0) >= self.limit

    def __len__(self) -> int:
        return len(self._handled)

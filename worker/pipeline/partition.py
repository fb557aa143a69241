"""What a worker knows about one partition it owns. Revoking a partition drops its object."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.pipeline.offsets import PartitionOffsets
from worker.pipeline.runahead import RunAhead


@dataclass
class PartitionState:
    tp: Any                                    # aiokafka TopicPartition (any hashable here)
    # Re-read position inherited from the previous owner's commit metadata (0 when the
    # group had committed but recorded none: a rebuild must then start at the beginning).
    floor: int | None = None
    committed: int | None = None               # last offset committed for it (by anyone)
    checked: bool = False                      # its Redis windows verified since assignment
    owned: bool = True                         # False once revoked (late work for it is dropped)
    processed: int | None = None               # next offset after the last bar handled
    oldest: dict[str, int] = field(default_factory=dict)  # symbol -> oldest offset in its window
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    runahead: RunAhead | None = None           # bars per symbol past the commit (worker/pipeline/runahead.py)

    def rebuild_from(self) -> int | None:
        """Where to re-read the partition from to rebuild all its symbols' windows (None: nothing to)."""
        candidates = list(self.oldest.values())
        if self.floor is not None:
            candidates.append(self.floor)
        return min(candidates) if candidates else None

    def note_window(self, symbol: str, window) -> None:
        """Remember the oldest offset still in `symbol`'s window (a rebuild must reach back to it)."""
        if len(window):
            self.oldest[symbol] = int(window.offsets.min())

    def note_oldest(self, symbol: str, offset: int) -> None:
        """note_window's record, the window's oldest offset already known."""
        self.oldest[symbol] = offset

    def handled(self, offset: int) -> None:
        self.processed = offset + 1

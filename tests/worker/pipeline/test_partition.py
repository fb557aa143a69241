"""worker/pipeline/partition.py: where a rebuild starts."""
import numpy as np

from worker.pipeline.partition import PartitionState
from worker.pipeline.windows import Window


def window(offsets):
    n = len(offsets)
    return Window(np.zeros(n, dtype="datetime64[s]"), np.zeros((n, 6)), np.array(offsets, dtype=np.int64), 1)


def test_rebuild_starts_at_the_oldest_offset_still_in_any_window_or_the_inherited_floor():
    st = PartitionState("p0")
    assert st.rebuild_from() is None
    st.note_window("AAA", window([30, 31, 35]))
    st.note_window("BBB", window([12, 40]))
    assert st.rebuild_from() == 12
    st.floor = 5
    assert st.rebuild_from() == 5
    st.note_window("CCC", window([]))  # empty: ignored
    assert "CCC" not in st.oldest


def test_handled_moves_the_processed_position():
    st = PartitionState("p0")
    st.handled(9)
    assert st.processed == 10

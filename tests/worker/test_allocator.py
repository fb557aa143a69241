import resource
import sys

import numpy as np
import pytest

from worker.allocator import retain_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")

MIB = 1 << 20


def _faults_of_churn(size: int = 16 * MIB, rounds: int = 5) -> int:
    """Minor page faults of allocating, filling and freeing `size` bytes `rounds` times."""
    np.ones(size // 8).sum()  # first touch: whatever the settings, the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        np.ones(size // 8).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_retained_memory_is_reused_without_page_faults():
    # glibc's behaviour at its most eager: every freed block goes back to the OS and is
    # faulted in again. With transparent huge pages one fault maps 2 MiB, so the floor is
    # half of 16 MiB / 2 MiB per round, not one fault per 4 KiB page...
    assert retain_freed_memory(trim_threshold=0, mmap_threshold=64 << 10)
    eager = _faults_of_churn()
    assert eager >= 5 * 4
    # ...and as `kronos-rt` sets it up: the same churn reuses the heap.
    assert retain_freed_memory()
    assert _faults_of_churn() * 10 < eager

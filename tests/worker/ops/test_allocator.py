import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")

# Measured in a fresh interpreter: what earlier tests did to this process's heap (torch's
# pools, other mallopt calls) changes how many faults a churn costs here.
CHURN = """
import json, resource, sys
import numpy as np
from worker.ops.allocator import retain_freed_memory

def churn(size=16 << 20, rounds=5):
    np.ones(size // 8).sum()  # first touch: whatever the settings, the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        np.ones(size // 8).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

eager_ok = retain_freed_memory(trim_threshold=0, mmap_threshold=64 << 10)
eager = churn()
kept_ok = retain_freed_memory()
print(json.dumps({"ok": eager_ok and kept_ok, "eager": eager, "kept": churn()}))
"""


def test_retained_memory_is_reused_without_page_faults():
    res = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True)
    got = json.loads(res.stdout)
    assert got["ok"]
    # glibc at its most eager: every freed block goes back to the OS and is faulted in again.
    # With transparent huge pages one fault maps 2 MiB, so the floor is half of 16 MiB / 2 MiB
    # per round, not one fault per 4 KiB page...
    assert got["eager"] >= 5 * 4
    # ...and as `kronos-rt` sets it up: the same churn reuses the heap.
    assert got["kept"] * 10 < got["eager"]

"""Process-wide heap settings for repeated forecasting on CPU (glibc malloc).

An engine call allocates and frees a few hundred MiB (key/value caches, activations).
glibc's defaults hand memory of that size back to the OS on every free (tensors over its
dynamic mmap threshold are unmapped; a large free block at the top of the heap is trimmed),
so the next call page-faults all of it in again, zeroed by the kernel: about 50 000 minor
faults and a tenth of a second of system time per Kronos-small call at batch 8, lookback 256
(BENCHMARKS.md). Raising both thresholds keeps freed memory in the heap for the next call;
resident memory then stays at its high-water mark, as with jemalloc or tcmalloc.

This changes the whole process, so it belongs to the process's entry point, not to the
library: `kronos-rt` calls `retain_freed_memory()` once at start-up, for every command.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit: larger blocks are always mapped


def retain_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = MMAP_THRESHOLD_MAX) -> bool:
    """Keep up to `trim_threshold` bytes of freed heap for reuse and serve blocks up to
    `mmap_threshold` bytes from the heap. Returns False where the C library is not glibc
    (nothing changes there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    return mmap_ok and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))

"""Waiting out a dependency that does not answer (Kafka or Redis down, restarting, not up yet).

In compose and Kubernetes the broker and Redis are often up after the worker, and both
restart under it now and then. A worker waits for them with growing delays, logging once
per interval rather than once per attempt, and gives up only at an optional deadline.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from worker.errors import StartupError  # printed by `kronos-rt` without a traceback (exit 1)

log = logging.getLogger("kronos_rt.worker")


async def wait_until(probe: Callable[[], Awaitable[object]], what: str, *,
                     stopping: Callable[[], bool] = lambda: False, timeout_s: float = 0.0,
                     fatal: tuple[type[BaseException], ...] = (), log_every_s: float = 10.0,
                     base_s: float = 0.2, cap_s: float = 5.0) -> bool:
    """Call `probe` until it returns without raising: True then, False if `stopping()` turned
    true first. `timeout_s` > 0: raise StartupError when it passes (0 = wait forever).
    Exceptions in `fatal` end the wait at once (as StartupError)."""
    t0 = time.monotonic()
    attempt = 0
    last_log = None
    while not stopping():
        try:
            await probe()
            if attempt:
                log.warning("%s answers again after %.1fs", what, time.monotonic() - t0)
            return True
        except asyncio.CancelledError:
            raise
        except fatal as err:
            raise StartupError(f"{what}: {err}") from err
        except Exception as err:  # not up yet: wait and retry
            now = time.monotonic()
            if timeout_s > 0 and now - t0 >= timeout_s:
                raise StartupError(f"{what} did not answer within {timeout_s:g}s (last error: {err!r})") from err
            if last_log is None or now - last_log >= log_every_s:
                last_log = now
                log.warning("waiting for %s (%.0fs so far): %r", what, now - t0, err)
        delay = min(cap_s, base_s * 2 ** min(attempt, 20))
        attempt += 1
        end = time.monotonic() + delay
        while time.monotonic() < end and not stopping():
            await asyncio.sleep(min(0.05, delay))
    return False

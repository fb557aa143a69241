"""worker/adapters/waiting.py: waiting out a dependency with backoff, a deadline and fatal errors."""
from __future__ import annotations

import asyncio

import pytest

from worker.errors import StartupError
from worker.adapters.waiting import wait_until


class Flaky:
    def __init__(self, failures: int, error=ConnectionError("refused")):
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


async def test_retries_until_it_answers():
    probe = Flaky(3)
    assert await wait_until(probe, "thing", base_s=0.001, cap_s=0.005)
    assert probe.calls == 4


async def test_deadline_raises_a_startup_error_naming_it():
    with pytest.raises(StartupError, match="thing did not answer within 0.05s"):
        await wait_until(Flaky(10**6), "thing", timeout_s=0.05, base_s=0.001, cap_s=0.01)


async def test_fatal_errors_end_the_wait_at_once():
    probe = Flaky(10**6, error=PermissionError("wrong password"))
    with pytest.raises(StartupError, match="wrong password"):
        await wait_until(probe, "thing", fatal=(PermissionError,), base_s=0.001)
    assert probe.calls == 1


async def test_stopping_ends_the_wait():
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert not await wait_until(Flaky(10**6), "thing", stopping=stop.is_set, base_s=0.01, cap_s=0.02)

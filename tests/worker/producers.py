"""Stand-in Kafka producers for publisher tests: one that fails as scripted, one that refuses
messages over a size limit; and a short wait for a condition."""
from __future__ import annotations

import asyncio

from aiokafka.errors import MessageSizeTooLargeError


class ScriptedProducer:
    """send() returns a future that fails `failures` times, then succeeds."""

    def __init__(self, failures: int):
        self.failures = failures
        self.sent = []
        self.closed = False

    async def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers))
        fut = asyncio.get_running_loop().create_future()
        if len(self.sent) <= self.failures:
            fut.set_exception(RuntimeError("broker said no"))
        else:
            fut.set_result(None)
        return fut


async def until(cond, timeout=2.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.001)


class SizeLimitedProducer:
    """Raises like aiokafka's send() (synchronously) for records over `limit` bytes, or fails
    their future like a broker with a smaller message.max.bytes would (`async_refusal`)."""

    def __init__(self, limit: int, async_refusal: bool = False):
        self.limit, self.async_refusal = limit, async_refusal
        self.sent, self.refused, self.closed = [], 0, False

    async def send(self, topic, key=None, value=None, headers=None):
        size = len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers or [])
        fut = asyncio.get_running_loop().create_future()
        if size > self.limit:
            self.refused += 1
            if not self.async_refusal:
                raise MessageSizeTooLargeError(f"{size} bytes")
            fut.set_exception(MessageSizeTooLargeError(f"{size} bytes"))
            return fut
        self.sent.append((topic, key, value, headers))
        fut.set_result(None)
        return fut

"""bench-stream's subscriber: the process that timestamps forecast arrivals.

A real subscriber is another process, so the bench's is too: a child process (spawned, not
forked: the bench holds torch's threads) reads the forecast topic with its own aiokafka
consumer and event loop, and reports each burst's arrivals back through a pipe. The
worker's event loop then carries the worker's work only, and its CPU time per burst counts
the worker, not the bench reading 5 000 forecasts beside it.

Per burst the bench says how many forecasts it expects (before sending the bars); the
child reads until it has them and answers with (arrival ms, key, the document's
latency_ms) per forecast, or an error line when the burst's time runs out.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor


class Subscriber:
    """The bench's side of the child process."""

    def __init__(self, brokers: str, topic: str, timeout_s: float):
        self.timeout_s = timeout_s
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, brokers, topic, timeout_s), daemon=True,
                                 name="bench-subscriber")
        self._wait = ThreadPoolExecutor(1, thread_name_prefix="bench-subscriber")

    async def start(self) -> None:
        self._proc.start()
        kind, detail = await self._reply(60.0 + self.timeout_s)
        if kind != "ready":
            raise RuntimeError(f"bench subscriber: {detail}")

    def expect(self, count: int) -> None:
        """The next burst's forecast count; call before sending its bars."""
        self._conn.send(count)

    async def burst(self) -> list[tuple[float, str, dict]]:
        """The burst's arrivals: (ms since the epoch, key, latency_ms), in arrival order."""
        kind, detail = await self._reply(self.timeout_s + 30.0)
        if kind != "burst":
            raise TimeoutError(f"bench subscriber: {detail}")
        return detail

    async def stop(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        await asyncio.get_running_loop().run_in_executor(self._wait, self._proc.join, 10.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._wait.shutdown(wait=False)

    async def _reply(self, timeout_s: float):
        # Waited on in a thread of its own: the event loop (the worker's) stays free.
        def recv():
            if not self._conn.poll(timeout_s):
                return "error", f"no answer in {timeout_s:.0f} s"
            try:
                return self._conn.recv()
            except EOFError:
                return "error", f"the process ended (exit code {self._proc.exitcode})"

        return await asyncio.get_running_loop().run_in_executor(self._wait, recv)


def _child(conn, brokers: str, topic: str, timeout_s: float) -> None:
    try:
        asyncio.run(_serve(conn, brokers, topic, timeout_s))
    except Exception as e:  # noqa: BLE001 - reported to the bench as one line
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except OSError:
            pass


async def _serve(conn, brokers: str, topic: str, timeout_s: float) -> None:
    import orjson
    from aiokafka import AIOKafkaConsumer

    # A short fetch wait: the Tansu broker answers a waiting fetch about a quarter of its wait
    # after records arrive (aiokafka's default 500 ms: ~115 ms; 10 ms: ~4 ms), where Kafka
    # answers at once; the default would add that to every burst's last forecast.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=brokers, group_id=None, auto_offset_reset="earliest",
                                fetch_max_wait_ms=10)
    await consumer.start()
    try:
        conn.send(("ready", None))
        while (want := conn.recv()) is not None:  # blocking is fine: nothing else runs here
            received = []  # (ms, key, value): parsed once the burst is complete
            deadline = time.monotonic() + timeout_s
            while len(received) < want:
                if time.monotonic() > deadline:
                    conn.send(("error", f"{len(received)}/{want} forecasts in {timeout_s:g} s"))
                    return
                batch = await consumer.getmany(timeout_ms=50)
                now_ms = time.time() * 1000
                for msgs in batch.values():
                    received.extend((now_ms, m.key, m.value) for m in msgs)
            conn.send(("burst", [(ms, key.decode(), orjson.loads(value)["latency_ms"])
                                 for ms, key, value in received]))
    finally:
        await consumer.stop()

"""bench-stream's feed and subscriber: the process that sends each burst's bars and
timestamps the forecasts' arrivals.

A real feed and a real subscriber are other processes, so the bench's are too: a child
process (spawned, not forked: the bench holds torch's threads) sends the bars with its own
aiokafka producer and reads the forecast topic with its own consumer and event loop, and
reports each burst back through a pipe. The worker's event loop then carries the worker's
work only, and its CPU time per burst counts the worker, not the bench sending 5 000 bars
and reading 5 000 forecasts beside it.

Per burst the bench hands over the encoded bars and how many forecasts it expects, before
the burst starts (`expect`); `burst()` then tells the child to send them, as record batches,
like a feed publishing a bar of every symbol at once. The child answers with the time it
began sending (ms) and (arrival ms, key, the document's latency_ms) per forecast, or an
error line when the burst's time runs out.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor


class Subscriber:
    """The bench's side of the child process."""

    def __init__(self, brokers: str, topic: str, timeout_s: float, bars_topic: str):
        self.timeout_s = timeout_s
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, brokers, topic, timeout_s, bars_topic), daemon=True,
                                 name="bench-subscriber")
        self._wait = ThreadPoolExecutor(1, thread_name_prefix="bench-subscriber")

    async def start(self) -> None:
        self._proc.start()
        kind, detail = await self._reply(60.0 + self.timeout_s)
        if kind != "ready":
            raise RuntimeError(f"bench subscriber: {detail}")

    def expect(self, count: int, records: list[tuple[bytes, bytes]]) -> None:
        """The next burst: its forecast count and the bars (key, value) the child sends when
        `burst()` is called. Handed over before the burst, so pickling them is not the burst's."""
        self._conn.send((count, records))

    async def burst(self) -> tuple[float, list[tuple[float, str, dict]]]:
        """Send the bars handed to expect() and wait for the burst's forecasts: (ms since the
        epoch when the child began sending; the arrivals as (ms since the epoch, key,
        latency_ms), in arrival order)."""
        self._conn.send("go")
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


def _child(conn, brokers: str, topic: str, timeout_s: float, bars_topic: str) -> None:
    try:
        asyncio.run(_serve(conn, brokers, topic, timeout_s, bars_topic))
    except Exception as e:  # noqa: BLE001 - reported to the bench as one line
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except OSError:
            pass


async def _send(producer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Every record, acknowledged: as record batches, a refused batch one by one."""
    from worker.adapters.kafka import send_many

    for fut, indices in await send_many(producer, topic, records):
        if fut is None:
            for i in indices:
                await (await producer.send(topic, key=records[i][0], value=records[i][1]))
        else:
            await fut


async def _serve(conn, brokers: str, topic: str, timeout_s: float, bars_topic: str) -> None:
    import orjson
    from aiokafka import AIOKafkaConsumer

    from worker.adapters.kafka import make_producer

    # A short fetch wait: the Tansu broker answers a waiting fetch about a quarter of its wait
    # after records arrive (aiokafka's default 500 ms: ~115 ms; 10 ms: ~4 ms), where Kafka
    # answers at once; the default would add that to every burst's last forecast.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=brokers, group_id=None, auto_offset_reset="earliest",
                                fetch_max_wait_ms=10)
    await consumer.start()
    producer = make_producer(brokers, client_id="bench-feed")
    await producer.start()
    try:
        conn.send(("ready", None))
        while (burst := conn.recv()) is not None:  # blocking is fine: nothing else runs here
            want, records = burst
            if conn.recv() is None:  # stopped instead of "go"
                break
            # Every bar's Kafka timestamp is taken when it joins its record batch, just after this.
            sent = time.time() * 1000
            await _send(producer, bars_topic, records)
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
            conn.send(("burst", (sent, [(ms, key.decode(), orjson.loads(value)["latency_ms"])
                                        for ms, key, value in received])))
    finally:
        await consumer.stop()
        await producer.stop()

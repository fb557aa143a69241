"""Redis goes away under a running worker (stopped, then started again empty on the same
port): the worker stays up, says not ready while Redis is away, pauses, and then rebuilds
the windows from the bar topic and forecasts every bar that arrived meanwhile."""
from __future__ import annotations

import asyncio
import time

import pytest

from tests.worker.faults.report import readyz, tally
from tests.worker.streams import (
    TAPE, Worker, consume, engine, expected_keys, make_settings, names, one_torch_thread, running_worker,
)
from tests.worker.faults.report import covered
from worker.errors import StartupError
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay
from worker.tools.services import RedisServer
from tests.worker.faults.report import until

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


async def _outage(broker, tag: str, server: RedisServer, fault, heal, while_down=None):
    """Replay 60 bars per symbol and wait for their forecasts; `fault()`; replay 50 more;
    check the worker says not ready and stays up (and `while_down(worker)` 2 s in); `heal()`; wait for every owed forecast and
    for /readyz 200. Returns (rows, owed, forecast messages, recovery seconds, worker)."""
    topics = names(tag)
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=3, limit=110)
    want = expected_keys(rows)
    before, during = prepare(TAPE, fanout=3, limit=60), prepare(TAPE, fanout=3, skip=60, limit=50)
    settings = make_settings(broker, server.url, "krt", topics)
    async with running_worker(settings) as worker:
        task = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Worker.run")
        await replay(before, broker, topics["bars_topic"])
        await consume(broker, topics["forecasts_topic"],
                      lambda got: covered(got) >= expected_keys(before), timeout=60)
        fault()
        await replay(during, broker, topics["bars_topic"])
        await until(lambda: readyz(worker.metrics_port)[0] == 503, 15, "/readyz to say 503")
        status, checks = readyz(worker.metrics_port)
        assert checks["redis"] is False and checks["kafka"] is True
        await asyncio.sleep(2.0)  # past a slow tick (1 s)
        if while_down is not None:
            while_down(worker)
        assert not task.done(), "the worker must ride out the outage"
        heal()
        t0 = time.monotonic()
        msgs = await consume(broker, topics["forecasts_topic"], lambda got: covered(got) >= want, timeout=90)
        recovery = time.monotonic() - t0
        await until(lambda: readyz(worker.metrics_port)[0] == 200, 15, "/readyz to say 200 again")
    return rows, want, msgs, recovery, worker, len(during)


async def test_redis_restart_mid_stream(broker):
    server = RedisServer().start()
    port = server.port
    restarted = []

    def restart():
        restarted.append(RedisServer(port=port).start())

    try:
        rows, want, msgs, recovery, worker, n_during = await _outage(
            broker, "redis-restart", server, fault=server.stop, heal=restart)  # stop: everything it held is gone
        assert worker.stats["rebuilds"] >= 1  # Redis came back empty
    finally:
        server.stop()
        for s in restarted:
            s.stop()
    row = tally("Redis restart (2 s away)", len(rows), want, msgs, recovery)
    assert row.lost == 0
    assert row.identical
    assert row.duplicates <= n_during  # only bars handled again after the outage


async def test_wrong_redis_password_is_a_clear_startup_error(broker):
    """A Redis that refuses the password: no partitions taken, a StartupError naming Redis
    (without the password), not a crash mid-stream."""
    topics = names("redis-auth")
    with RedisServer() as server:
        import redis as sync_redis
        sync_redis.Redis(port=server.port).config_set("requirepass", "right")
        url = f"redis://:wrong-secret@127.0.0.1:{server.port}/0"
        worker = Worker(make_settings(broker, url, "krt", topics), engine=engine()[0], model_ref=engine()[1])
        with pytest.raises(StartupError) as err:
            await asyncio.wait_for(worker.run(), 30)
    assert "Redis" in str(err.value) and "wrong-secret" not in str(err.value)
    assert not worker.partitions


async def test_redis_refusing_writes_is_waited_out(broker):
    """Redis out of memory (maxmemory reached, noeviction) answers pings but refuses writes:
    the worker pauses, says not ready, stays up, and goes on once writes are accepted."""
    import redis as sync_redis

    def past_a_slow_tick(worker):  # its ping answers, yet /readyz must stay 503
        status, checks = readyz(worker.metrics_port)
        assert status == 503 and checks["redis"] is False

    with RedisServer() as server:
        admin = sync_redis.Redis(port=server.port)

        def refuse_writes():
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)  # every write is refused from now on

        try:
            rows, want, msgs, recovery, _, _ = await _outage(
                broker, "redis-oom", server, fault=refuse_writes, heal=lambda: admin.config_set("maxmemory", 0),
                while_down=past_a_slow_tick)
        finally:
            admin.close()
    row = tally("Redis out of memory", len(rows), want, msgs, recovery, "writes refused")
    assert row.lost == 0
    assert row.identical

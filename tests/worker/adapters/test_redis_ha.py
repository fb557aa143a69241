"""worker/adapters/redis_connect.py and the Redis state on real highly available servers (fixtures
in tests/conftest.py start them on free ports): the URL forms, the slot check, windows and
scoring state on a 3-master Redis Cluster (pipelines split per node, scripts loaded on
every master, a reshard under way, a master failover) and behind Sentinel (a kill -9 of
the primary). Worker runs end to end: tests/worker/faults/test_redis_failover.py."""
from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import redis

from worker.pipeline import poison
from worker.adapters import redis_connect
from worker.config import Settings
from worker.errors import ConfigError
from worker.contracts.events import Bar
from worker.adapters.keys import RedisKeys
from worker.quality.live import Quality, QualityMetrics
from worker.pipeline.windows import WindowStore

T0 = dt.datetime(2024, 6, 18, 9, 35)


def mk(i, symbol, close=10.0):
    t = T0 + dt.timedelta(minutes=5 * i)
    c = close + i
    return Bar(symbol, t.isoformat(sep=" "), t, c, c + 1, c - 1, c, 100.0, None)


def prefix() -> str:
    return f"kt-{uuid.uuid4().hex[:10]}"


async def fill(store: WindowStore, symbols, bars: int, start: int = 0) -> None:
    """bars bars per symbol, one pipelined round trip per bar time (as a live burst is)."""
    for i in range(start, start + bars):
        items = [(mk(i, s), i) for s in symbols]
        for (bar, off), reply in zip(items, await store.upsert_ahead(items)):
            await store.apply(bar, off, reply)


# ------------------------------------------------------------------ URL forms and slots

def test_the_url_forms_parse_to_their_topology():
    t = redis_connect.parse("redis+sentinel://u:p%40ss@10.0.0.1:26379,10.0.0.2:26380/trading/2")
    assert (t.topology, t.nodes, t.master_name, t.db, t.username, t.password, t.tls) == (
        "sentinel", (("10.0.0.1", 26379), ("10.0.0.2", 26380)), "trading", 2, "u", "p@ss", False)
    t = redis_connect.parse("rediss+cluster://:secret@r1:7000,r2:7001?ssl_ca_certs=/etc/ca.pem")
    assert (t.topology, t.nodes, t.password, t.tls, t.options) == (
        "cluster", (("r1", 7000), ("r2", 7001)), "secret", True, {"ssl_ca_certs": "/etc/ca.pem"})
    assert redis_connect.parse("redis://127.0.0.1:6379/0").topology == "single"
    assert "secret" not in str(redis_connect.parse("redis+cluster://:secret@r1:7000"))


@pytest.mark.parametrize("url", ["http://r1:7000", "redis+clusters://r1:7000", "redis-cluster://r1:7000",
                                 "redis+cluster://r1:7000/0", "redis+sentinel://r1:26379",
                                 "redis+sentinel://r1/master", "redis+cluster://:pw@r1:7000?bogus=1"])
def test_a_url_of_another_form_is_a_one_line_config_error(url):
    with pytest.raises(ConfigError) as err:
        Settings(redis=url)
    assert "\n" not in str(err.value)


def test_the_worker_cli_says_which_forms_it_takes(tmp_path):
    """Today's redis+cluster://... traceback from redis-py is one line and exit 2."""
    import sys

    out = subprocess.run([sys.executable, "-m", "worker.cli", "worker", "--redis", "redis+clustr://:pw@r1:7000"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[3]),
                              "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "redis+sentinel://" in lines[0] and "redis+cluster://" in lines[0]
    assert "Traceback" not in out.stderr and ":pw@" not in out.stderr


def test_a_prefix_that_splits_a_script_over_slots_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="Cluster slots"):
        Settings(redis_prefix="a{}b")  # an empty hash tag: every key hashed whole
    Settings(redis_prefix="{tenant}")  # one slot for everything: works (no spreading)
    for keys in RedisKeys("krt").script_layouts("600000.SH").values():
        assert len({redis_connect.keyslot(k) for k in keys}) == 1


# ------------------------------------------------------------------ Redis Cluster

async def test_windows_on_a_cluster_equal_a_single_node_and_spread_over_the_masters(redis_cluster, redis_url):
    symbols = [f"S{i:03d}" for i in range(60)]
    p = prefix()
    cluster = redis_connect.connect(redis_cluster.url)
    single = redis_connect.connect(redis_url)
    try:
        assert redis_connect.topology(cluster) == "cluster" and redis_connect.topology(single) == "single"
        on_cluster, on_single = WindowStore(cluster, p, 16), WindowStore(single, p, 16)
        await fill(on_cluster, symbols, 20)  # a fresh cluster: the first pipeline loads the scripts
        await fill(on_single, symbols, 20)
        for s in symbols:
            a = await WindowStore(cluster, p, 16).window(s)  # cold: read from the cluster
            b = await on_single.window(s)
            assert len(a) == 16 and (a.times == b.times).all() and (a.offsets == b.offsets).all()
            np.testing.assert_array_equal(a.values, b.values)
        per_master = [len(list(redis.Redis(port=n.port).scan_iter(match=f"{p}:*"))) for n in redis_cluster.primaries()]
        assert len(per_master) == 3 and min(per_master) >= 3 * 5, per_master  # every master holds windows
        await on_cluster.delete(symbols)
        await on_single.delete(symbols)
        assert sum(len(list(redis.Redis(port=n.port).scan_iter(match=f"{p}:*"))) for n in redis_cluster.nodes) == 0
    finally:
        await cluster.aclose()
        await single.aclose()


async def test_scoring_state_on_a_cluster(redis_cluster):
    """Stored forecasts and claims (Lua in pipelines across slots) and pooled calibration state."""
    client = redis_connect.connect(redis_cluster.url)
    q = Quality(client, RedisKeys(prefix()), pred_len=2, levels=(0.1, 0.5, 0.9),
                metrics=QualityMetrics(__import__("prometheus_client").CollectorRegistry()), window=16, min_scores=1)
    ref = SimpleNamespace(name="m", version="1")
    step = dt.timedelta(minutes=5)
    horizon = [T0 + step, T0 + 2 * step]
    symbols = [f"Q{i}" for i in range(12)]
    try:
        closes = np.zeros((2, 6))
        closes[:, 3] = 10.0
        mean = np.zeros((2, 6))
        mean[:, 3] = [10.5, 11.0]
        fc = SimpleNamespace(mean=mean, quantiles={}, paths=None)
        await q.load(symbols)
        recs = [q.record(s, "2024-06-18T09:35:00", horizon, closes, fc, ref) for s in symbols]
        assert await q.store([(r, horizon, None) for r in recs]) == [[] for _ in symbols]
        pipe = client.pipeline(transaction=False)
        for s in symbols:
            await q.claim_into(pipe, s, horizon[0], 10.25, 7)
        replies = await redis_connect.execute(client, pipe)
        docs = [d for r in replies for d in q.score(q.claims(r, 10.25))]
        assert sorted(d["symbol"] for d in docs) == sorted(symbols) and all(d["step"] == 1 for d in docs)
        pipe = client.pipeline(transaction=False)
        for s in symbols:
            await q.claim_into(pipe, s, horizon[1], 10.75, 8)
        for r in await redis_connect.execute(client, pipe):
            q.score(q.claims(r, 10.75))
        await q.flush()  # the pool's state: one key, its own slot
        again = Quality(client, q.keys, pred_len=2, levels=(0.1, 0.5, 0.9), metrics=q.metrics, window=16)
        await again.load(symbols)
        assert again.calibrator(symbols[0])[1].scores() == q.calibrator(symbols[0])[1].scores() > 0
    finally:
        await client.aclose()


def _reshard(cluster, slots: int, done: threading.Event, errors: list) -> None:
    """Move `slots` slots from the first master to the second, key by key (MIGRATE): clients
    meet ASK while a slot is half moved and MOVED after."""
    a, b = cluster.primaries()[:2]
    ids = {n.port: cluster.cli(n, "cluster", "myid").strip() for n in (a, b)}
    try:
        out = subprocess.run(["redis-cli", "--cluster", "reshard", a.addr, "--cluster-from", ids[a.port],
                              "--cluster-to", ids[b.port], "--cluster-slots", str(slots), "--cluster-yes",
                              "--cluster-pipeline", "1"], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            errors.append(out.stdout[-1000:] + out.stderr[-1000:])
    finally:
        done.set()


async def test_a_reshard_under_way_is_never_seen(redis_cluster):
    """Upserts and reads go on while slots move between masters: MOVED/ASK are retried by the
    client, no call fails, and every window is whole afterwards."""
    symbols = [f"R{i:03d}" for i in range(150)]
    p = prefix()
    client = redis_connect.connect(redis_cluster.url)
    try:
        store = WindowStore(client, p, 400)
        await fill(store, symbols, 10)
        done, errors = threading.Event(), []
        threading.Thread(target=_reshard, args=(redis_cluster, 1500, done, errors), daemon=True).start()
        i = 10
        while not done.is_set():
            await fill(store, symbols, 1, start=i)
            i += 1
        assert not errors, errors
        assert i > 11, "the reshard ended before the upserts could meet it"
        for s in symbols:
            w = await WindowStore(client, p, 400).window(s)
            assert len(w) == i and (w.offsets == np.arange(i)).all()
    finally:
        await client.aclose()


async def test_a_cluster_master_failover(redis_cluster_ha):
    """kill -9 one master: calls fail only with errors the worker waits out (poison.is_outage),
    the replica is promoted, writes go on, the node in use changes and scripts work there."""
    c = redis_cluster_ha
    symbols = [f"F{i:03d}" for i in range(40)]
    p = prefix()
    client = redis_connect.connect(c.url, socket_connect_timeout=1, socket_timeout=2)
    try:
        store = WindowStore(client, p, 64)
        await fill(store, symbols, 5)
        before = redis_connect.node_in_use(client)
        victim = c.primaries()[0]
        victim.kill()
        t0, i, failures = time.monotonic(), 5, []
        while time.monotonic() - t0 < 30:
            try:
                await fill(store, symbols, 1, start=i)
                i += 1
                if redis_connect.node_in_use(client) != before and i >= 12:
                    break
            except Exception as exc:  # noqa: BLE001 - each must be an outage
                assert poison.is_outage(exc), repr(exc)
                failures.append(exc)
                await asyncio.sleep(0.2)
        after = redis_connect.node_in_use(client)
        assert after != before and victim.addr not in after and len(after.split(",")) == 3
        assert i >= 12
        for s in symbols:  # every window answers; the writes after the promotion are there
            w = await WindowStore(client, p, 64).window(s)
            assert w.times[-1] == np.datetime64(mk(i - 1, s).time, "s") and len(w) >= 5
    finally:
        await client.aclose()


# ------------------------------------------------------------------ Sentinel

async def test_sentinel_follows_a_failover(redis_sentinel):
    g = redis_sentinel
    client = redis_connect.connect(g.url, socket_connect_timeout=1, socket_timeout=2)
    sync = redis_connect.connect_sync(g.url, socket_connect_timeout=1, socket_timeout=2)
    symbols = [f"N{i}" for i in range(8)]
    p = prefix()
    try:
        store = WindowStore(client, p, 64)
        await fill(store, symbols, 3)
        assert redis_connect.topology(client) == "sentinel"
        assert redis_connect.node_in_use(client) == g.primary.addr
        assert int(sync.exists(*store.keys(symbols[0]))) == 3
        g.primary.kill()
        t0, i = time.monotonic(), 3
        while time.monotonic() - t0 < 30:
            try:
                await fill(store, symbols, 1, start=i)
                i += 1
                break
            except Exception as exc:  # noqa: BLE001
                assert poison.is_outage(exc), repr(exc)
                await asyncio.sleep(0.2)
        assert i == 4, "no write went through within 30 s of the kill"
        took = time.monotonic() - t0
        assert redis_connect.node_in_use(client) == g.replicas[0].addr == f"127.0.0.1:{g.master_port()}"
        assert took < 15, took
    finally:
        await client.aclose()
        sync.close()


@pytest.mark.parametrize("missing", [1, 2])
async def test_a_replica_that_missed_the_last_writes_is_noticed(private_redis, missing):
    """What a failover onto a lagging replica leaves: the window as it was `missing` writes ago
    (restored from a DUMP, as a replica holds it). The next upsert of the symbol says lost,
    the version going on (missing=1) or back (2) alike, so the worker rebuilds from the bar topic."""
    client = redis_connect.connect(private_redis)
    sync = redis.Redis.from_url(private_redis)
    try:
        store = WindowStore(client, "kt", 32)
        for i in range(10 - missing):
            await store.upsert(mk(i, "LAG"), i)
        snapshot = {k: sync.dump(k) for k in store.keys("LAG")}
        for i in range(10 - missing, 10):
            assert not (await store.upsert(mk(i, "LAG"), i)).lost
        for k, v in snapshot.items():  # the replica's view: the last `missing` writes never arrived
            sync.restore(k, 0, v, replace=True)
        r = await store.upsert(mk(10, "LAG"), 10)
        assert r.lost
    finally:
        await client.aclose()
        sync.close()


async def test_readyz_and_a_metric_name_the_topology_and_node(redis_sentinel):
    """/readyz carries redis_topology and redis_node beside the checks (redis_error while a ping
    fails), kronos_rt_redis_info the same; neither changes what counts as ready."""
    import json
    import urllib.error
    import urllib.request

    from worker.ops.health import Health
    from worker.ops.metrics import MetricsServer, WorkerMetrics

    def readyz(port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    g = redis_sentinel
    client = redis_connect.connect(g.url, socket_connect_timeout=1, socket_timeout=1)
    health, metrics = Health(), WorkerMetrics()
    server = MetricsServer(metrics, port=0, host="127.0.0.1", ready_checks=lambda: {"redis": health.ready["redis"]},
                           details=health.details)
    port = server.start()
    store = WindowStore(client, prefix(), 8)
    try:
        assert await health.ping_redis(store)
        assert not health.note_redis_node(client, metrics)  # the first note is no change
        assert readyz(port) == (200, {"redis": True, "redis_topology": "sentinel", "redis_node": g.primary.addr})
        info = [s for m in metrics.registry.collect() if m.name == "kronos_rt_redis" for s in m.samples]
        assert info[0].labels == {"topology": "sentinel", "node": g.primary.addr}
        g.primary.kill()
        assert not await health.ping_redis(store)
        status, body = readyz(port)
        assert status == 503 and body["redis"] is False and body["redis_error"]
        deadline = time.monotonic() + 30
        while not await health.ping_redis(store):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert health.note_redis_node(client, metrics)  # moved: the worker rebuilds on this
        assert readyz(port) == (200, {"redis": True, "redis_topology": "sentinel", "redis_node": g.replicas[0].addr})
    finally:
        server.stop()
        await client.aclose()

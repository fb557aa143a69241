"""The tools that touch Redis on a Cluster and behind Sentinel (servers from tests/conftest.py):
bench-stream against a given cluster URL and with its own local cluster beside a single
server, the demo against a Sentinel URL; each leaves no key behind."""
import asyncio
import os
import subprocess
import sys

import pytest
import redis

from tests.worker.tools.bench_args import bench_stream_args
from worker.tools import bench_stream

pytestmark = pytest.mark.slow


def _keys(ports, pattern):
    return sum(len(list(redis.Redis(port=p).scan_iter(match=pattern, count=1000))) for p in ports)


def test_bench_stream_on_a_given_cluster_url_and_on_its_own_cluster(broker, redis_cluster):
    args = bench_stream_args(symbols=6, bursts=2, warmup_bursts=1, shape="mini", lookback=24, pred_len=2, max_batch=8,
                 max_wait_ms=20.0, partitions=2, device="cpu", repeats=1, brokers=broker, redis=redis_cluster.url,
                 timeout_s=120.0)
    on_given = asyncio.run(bench_stream.run_bench(args))            # --redis redis+cluster://...
    on_own = asyncio.run(bench_stream.run_bench(args, "cluster"))   # --topologies cluster: one it starts
    for result in (on_given, on_own):
        assert result.forecasts == 6 * 2 and len(result.burst_ms) == 2
    assert _keys([n.port for n in redis_cluster.nodes], "bench-*") == 0  # nothing left on any master


def test_bench_stream_refuses_an_unknown_topology_or_url_form(capsys):
    from worker.cli import main

    assert main(["bench-stream", "--topologies", "single,sharded"]) == 2
    assert main(["bench-stream", "--redis", "redis-cluster://r1:7000"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2 and "single, cluster" in lines[0] and "redis+cluster://" in lines[1]


def test_demo_on_sentinel(tmp_path, redis_sentinel):
    env = dict(os.environ, KRONOS_RT_REGISTRY=str(tmp_path / "registry"), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "worker.cli", "demo", "--symbols", "2", "--bars", "60", "--quiet",
                          "--out", str(tmp_path / "report"), "--speed", "max", "--redis", redis_sentinel.url],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "forecasts        26 of 26 expected" in res.stdout  # 2 symbols x (60 - 48 + 1)
    assert redis_sentinel.url in res.stdout
    assert _keys([redis_sentinel.primary.port], "kronos-rt-demo-*") == 0

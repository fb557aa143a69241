"""`kronos-rt bench-stream` at toy size: real broker, real Redis, the worker in-process."""
import asyncio

import pytest
import redis

from tests.worker.tools.bench_args import bench_stream_args
from worker.tools import bench_stream

pytestmark = pytest.mark.slow


def test_bench_stream_measures_every_burst(broker, redis_url):
    args = bench_stream_args(symbols=6, bursts=2, warmup_bursts=1, shape="mini", lookback=24, pred_len=2, max_batch=4,
                 max_wait_ms=20.0, partitions=2, device="cpu", repeats=1, brokers=broker, redis=redis_url,
                 timeout_s=120.0)
    client = redis.Redis.from_url(redis_url)
    before = set(client.scan_iter(match="bench-*", count=1000))  # other runs' leftovers are not ours
    result = asyncio.run(bench_stream.run_bench(args))
    assert result.forecasts == 6 * 2  # warm-up burst not counted
    assert len(result.burst_ms) == len(result.burst_batches) == 2
    for batches, ms in zip(result.burst_batches, result.burst_ms):
        assert sum(batches) == 6 and max(batches) <= 4  # each burst's forecasts, in batches of <= max_batch
        assert ms > 0
    assert set(result.engine_ms) == {b for bs in result.burst_batches for b in bs}
    assert all(v > 0 for v in result.engine_ms.values())
    # the engine alone timed right after each burst, on that burst's batch sizes
    assert len(result.engine_after_ms) == 2 and all(v > 0 for v in result.engine_after_ms)
    assert [result.engine_burst_ms(i) for i in range(2)] == result.engine_after_ms
    # where each burst's time beyond its batches went: before the first, after the last, between
    assert len(result.phases_ms) == 2
    for (to_first, after_last, between), ms, inference in zip(result.phases_ms, result.burst_ms,
                                                               result.worker_inference_ms):
        assert to_first > 0 and after_last > 0 and to_first + after_last + between + inference == pytest.approx(ms)
    assert 0 < result.p50_ms <= result.p99_ms <= max(result.burst_ms) + 1
    assert len(result.worker_inference_ms) == 2 and all(0 < w <= b for w, b in zip(result.worker_inference_ms, result.burst_ms))
    table = result.table()
    assert "burst: engine-only, same batches (median)" in table
    assert "burst: bars sent -> first batch, engine idle between batches, last batch -> last forecast" in table
    assert ("PASS" in table) != ("FAIL" in table)
    # nothing left behind in the shared Redis
    try:
        assert not set(client.scan_iter(match="bench-*", count=1000)) - before
    finally:
        client.close()


def test_bench_stream_rejects_bad_counts(capsys):
    from worker.cli import main

    assert main(["bench-stream", "--bursts", "0"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["kronos-rt bench-stream: error: --bursts and --symbols must be >= 1, --warmup-bursts >= 0"]


def test_bench_stream_with_a_shadow_model(broker, redis_url):
    """--shadow: the primary's bursts are measured as without it; the shadow forecasts the
    windows in between (each burst is sent once the shadow is idle)."""
    args = bench_stream_args(symbols=6, bursts=2, warmup_bursts=1, shape="mini", lookback=24, pred_len=2, max_batch=8,
                 max_wait_ms=20.0, partitions=2, device="cpu", repeats=1, brokers=broker, redis=redis_url,
                 timeout_s=120.0, shadow=True)
    result = asyncio.run(bench_stream.run_bench(args))
    assert result.forecasts == 6 * 2
    assert result.shadow_forecasts >= 6 * 2  # the warm-up and first burst at least, before the last was sent
    assert "shadow forecasts" in result.table()


def test_bench_stream_with_the_engine_in_a_process(broker, redis_url):
    """--inference process: the worker's inference is timed beside the engine's own compute in
    its process, the engine alone is that process's time, and its RSS is reported."""
    args = bench_stream_args(symbols=6, bursts=2, warmup_bursts=1, shape="mini", lookback=24, pred_len=2, max_batch=4,
                             max_wait_ms=20.0, partitions=2, device="cpu", repeats=1, brokers=broker, redis=redis_url,
                             timeout_s=120.0, inference="process", engine_threads=1)
    result = asyncio.run(bench_stream.run_bench(args))
    assert result.forecasts == 6 * 2
    assert len(result.engine_process_ms) == len(result.engine_rss_mib) == 2
    for child, worker in zip(result.engine_process_ms, result.worker_inference_ms):
        assert 0 < child <= worker  # the worker's time holds the hand-over besides the compute
    assert all(v > 0 for v in result.engine_rss_mib) and all(v > 0 for v in result.engine_after_ms)
    table = result.table()
    assert "burst: of which the engine's own compute in its process (median)" in table
    assert "engine process RSS after each burst" in table

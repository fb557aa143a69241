"""`kronos-rt bench-stream`: bar -> forecast latency through broker, Redis and a worker,
beside the engine's own compute time for the same batch sizes, in the same run.

Setup: an embedded broker and a private Redis unless given; a Worker in-process with a
random-weight model of a public shape (default Kronos-small) or a checkpoint. Every
symbol first gets warm history written straight into Redis (so warm-up produces no
forecasts), then `--bursts` times one new bar per symbol is published at once and the
bench waits for all their forecasts. Latency is the bar's Kafka timestamp to the moment
the bench's consumer receives the forecast. After the bursts, the engine alone forecasts
the same windows at the batch sizes the worker actually ran.

Target: at a 256-symbol burst the pipeline adds at most 20 % + 10 ms over engine compute:
p50 latency <= 1.2 x engine time for the burst + 10 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from dataclasses import dataclass

import numpy as np

from worker import events
from worker.config import ModelRef, Settings
from worker.kafka import ensure_topics, make_producer
from worker.tape import fan_out, read_tape
from worker.windows import WindowStore

log = logging.getLogger(__name__)

TARGET_RATIO, TARGET_MS = 1.2, 10.0


@dataclass
class BenchResult:
    symbols: int
    bursts: int
    forecasts: int
    p50_ms: float
    p99_ms: float
    forecasts_per_s: float
    batch_sizes: list[int]
    engine_ms: dict[int, float]      # batch size -> median engine compute, ms
    worker_inference_ms: float       # median of the worker's own inference stage per batch

    @property
    def engine_burst_ms(self) -> float:
        """Engine time to forecast one whole burst, as the worker batched it."""
        return sum(self.engine_ms[b] for b in self.batch_sizes) / max(1, self.bursts)

    @property
    def target_ms(self) -> float:
        return TARGET_RATIO * self.engine_burst_ms + TARGET_MS

    def table(self) -> str:
        rows = [
            ("symbols per burst", f"{self.symbols}"),
            ("bursts", f"{self.bursts}"),
            ("forecasts", f"{self.forecasts}"),
            ("worker batch sizes", ", ".join(str(b) for b in sorted(set(self.batch_sizes)))),
            ("bar -> forecast p50", f"{self.p50_ms:.1f} ms"),
            ("bar -> forecast p99", f"{self.p99_ms:.1f} ms"),
            ("forecasts/s (during bursts)", f"{self.forecasts_per_s:,.0f}"),
            ("engine compute per burst (same batches)", f"{self.engine_burst_ms:.1f} ms"),
            ("worker's own inference stage (median batch)", f"{self.worker_inference_ms:.1f} ms"),
            ("pipeline overhead at p50", f"{self.p50_ms - self.engine_burst_ms:.1f} ms"),
            (f"target p50 <= {TARGET_RATIO:.1f} x engine + {TARGET_MS:.0f} ms",
             f"{self.target_ms:.1f} ms: {'PASS' if self.p50_ms <= self.target_ms else 'FAIL'}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _engine_and_ref(args):
    from kronos_rt import Engine, Kronos, KronosTokenizer
    from kronos_rt.engine import resolve_device, resolve_dtype
    from worker.config import resolve_model

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.model:
        mref = resolve_model(args.model)
        tref = resolve_model(args.tokenizer or args.model, kind="tokenizer")
        model = Kronos.from_pretrained(mref.location, revision=mref.revision)
        tokenizer = KronosTokenizer.from_pretrained(tref.location, revision=tref.revision)
        max_context, ref = args.max_context or 512, mref
    else:
        from kronos_rt.shapes import random_pair

        model, tokenizer, max_context = random_pair(args.shape, seed=0)
        max_context = args.max_context or max_context
        ref = ModelRef(f"random-{args.shape}", "seed0", "seed0")
    return Engine(model, tokenizer, device=device, dtype=dtype, max_context=max_context), ref


async def _warm_history(redis_url: str, prefix: str, lookback: int, tape) -> None:
    """Write each symbol's history straight into its Redis window (no Kafka, no forecasts)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    store = WindowStore(client, prefix, lookback)
    try:
        for _, bar, _ in _bars(tape):
            await store.upsert(events.parse_bar(events.dumps(bar)), 0)
    finally:
        await client.aclose()


def _bars(tape):
    from worker.tape import bar_events

    return bar_events(tape)


async def run_bench(args) -> BenchResult:
    from worker.app import Worker
    from worker.services import EmbeddedBroker, RedisServer

    with contextlib.ExitStack() as stack:
        brokers = args.brokers or stack.enter_context(EmbeddedBroker()).bootstrap
        redis_url = args.redis or stack.enter_context(RedisServer()).url
        u = uuid.uuid4().hex[:8]
        bars_topic, fc_topic = f"bench-bars-{u}", f"bench-fc-{u}"
        await ensure_topics(brokers, {bars_topic: args.partitions, fc_topic: args.partitions})

        tape = read_tape(args.tape, symbol="BENCH")
        history = args.lookback
        need = history + args.bursts
        if len(tape) < need:
            raise SystemExit(f"tape has {len(tape)} bars; need lookback + bursts = {need}")
        synthetic = fan_out(tape.iloc[:need].reset_index(drop=True), args.symbols, base="B")
        synthetic["n"] = synthetic.groupby("symbol").cumcount()
        prefix = f"bench-{u}"
        log.info("writing %d bars of warm history for %d symbols", history, args.symbols)
        await _warm_history(redis_url, prefix, args.lookback, synthetic[synthetic["n"] < history])

        engine, ref = _engine_and_ref(args)
        settings = Settings(
            brokers=brokers, redis=redis_url, redis_prefix=prefix, group=f"bench-{u}", bars_topic=bars_topic,
            forecasts_topic=fc_topic, dlq_topic=f"bench-dlq-{u}", lookback=args.lookback,
            min_history=min(args.lookback, 64), pred_len=args.pred_len, max_context=engine.max_context,
            temperature=1.0, top_k=1, top_p=1.0, sample_count=1, max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms, metrics_port=0, max_queue=max(4096, 4 * args.symbols),
            worker_id="bench", device=str(engine.device),
        )
        worker = Worker(settings, engine=engine, model_ref=ref)
        sizes: list[int] = []
        inner = worker._compute

        def compute(items):
            sizes.append(len(items))
            return inner(items)

        worker._compute = compute
        task = asyncio.create_task(worker.run())
        while not worker._assigned and not task.done():
            await asyncio.sleep(0.05)
        if task.done():
            task.result()

        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(fc_topic, bootstrap_servers=brokers, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        producer = make_producer(brokers, client_id="bench-feed")
        await producer.start()
        latencies, t_first, t_last = [], None, None
        try:
            for burst in range(args.bursts):
                rows = synthetic[synthetic["n"] == history + burst]
                futs = []
                for sym, bar, _ in _bars(rows):
                    futs.append(await producer.send(bars_topic, key=sym.encode(), value=events.dumps(bar)))
                # The bar's Kafka timestamp (set by this producer, same clock) per symbol.
                sent_ms = {md_key: md.timestamp for md_key, md in
                           zip(rows["symbol"], await asyncio.gather(*futs))}
                t_first = t_first or min(sent_ms.values()) / 1000
                got = 0
                deadline = time.monotonic() + args.timeout_s
                while got < len(rows):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"burst {burst}: {got}/{len(rows)} forecasts")
                    batch = await consumer.getmany(timeout_ms=50)
                    now_ms = time.time() * 1000
                    for msgs in batch.values():
                        for m in msgs:
                            latencies.append(now_ms - sent_ms[m.key.decode()])
                            got += 1
                t_last = time.time()
        finally:
            await producer.stop()
            await consumer.stop()
            worker.stop()
            await task

        # The engine alone, same windows, same batch sizes.
        engine_ms = await asyncio.get_running_loop().run_in_executor(
            None, _time_engine, engine, synthetic, history, args, sorted(set(sizes)), worker)
        inference = worker.metrics.stage_latency.labels(stage="inference")
        n_batches = max(1, len(sizes))
        worker_inf = inference._sum.get() / n_batches * 1000
        return BenchResult(
            symbols=args.symbols, bursts=args.bursts, forecasts=len(latencies),
            p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)),
            forecasts_per_s=len(latencies) / max(1e-9, (t_last - t_first)) if t_first else 0.0,
            batch_sizes=sizes, engine_ms=engine_ms, worker_inference_ms=worker_inf,
        )


def _time_engine(engine, synthetic, history, args, sizes, worker) -> dict[int, float]:
    from kronos_rt import SamplingParams

    sampling = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, sample_count=1)
    cols = ["open", "high", "low", "close", "volume", "amount"]
    windows = []
    for sym, g in synthetic.groupby("symbol", sort=True):
        g = g.iloc[args.bursts: args.bursts + history]  # the window of the last burst
        t = g["time"].to_numpy().astype("datetime64[s]")
        windows.append((np.asfortranarray(g[cols].to_numpy()), t, t[-1] + np.arange(1, args.pred_len + 1)
                        * np.timedelta64(int(worker.interval.total_seconds()), "s")))
    out = {}
    for size in sizes:
        chosen = [windows[i % len(windows)] for i in range(size)]
        runs = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            engine.forecast([w[0] for w in chosen], [w[1] for w in chosen], [w[2] for w in chosen],
                            args.pred_len, sampling)
            if engine.device.type == "cuda":
                import torch

                torch.cuda.synchronize(engine.device)
            runs.append((time.perf_counter() - t0) * 1000)
        out[size] = statistics.median(runs)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", type=int, default=256, help="symbols per burst (default 256)")
    parser.add_argument("--bursts", type=int, default=5, help="bars per symbol sent after the warm history")
    parser.add_argument("--shape", default="small", help="random-weight public shape: mini, small, base")
    parser.add_argument("--model", help="checkpoint (directory or hub id) instead of a random shape")
    parser.add_argument("--tokenizer", help="tokenizer for --model (default: same as --model)")
    parser.add_argument("--lookback", type=int, default=128, help="bars per window (default 128)")
    parser.add_argument("--pred-len", type=int, default=12, help="forecast steps (default 12)")
    parser.add_argument("--max-context", type=int, help="model context (default: the shape's)")
    parser.add_argument("--max-batch", type=int, default=256, help="worker --max-batch (default 256)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="worker --max-wait-ms")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the bench topics")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="engine-only timing repeats per batch size")
    parser.add_argument("--brokers", help="Kafka bootstrap servers (default: start an embedded broker)")
    parser.add_argument("--redis", help="Redis URL (default: start a private redis-server)")
    parser.add_argument("--tape", default=str(_default_tape()), help="tape the synthetic symbols come from")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up on a burst after this long")


def _default_tape():
    from pathlib import Path

    return Path(__file__).resolve().parent / "data" / "a_share_5min.csv"


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run_bench(args))
    print(result.table())
    return 0

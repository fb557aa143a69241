"""`kronos-rt bench-stream`: bar -> forecast latency through broker, Redis and a worker,
beside the engine's own compute time for the same batch sizes, in the same run.

Setup: an embedded broker and a private Redis unless given; a Worker in-process with a
random-weight model of a public shape (default Kronos-small) or a checkpoint. Every
symbol first gets warm history written straight into Redis (so it produces no
forecasts), then `--warmup-bursts` unmeasured bursts and `--bursts` measured ones: each
publishes one new bar per symbol at once and waits for all their forecasts before the
next. Latency is the bar's Kafka timestamp to the moment the bench's subscriber receives
the forecast; the feed that sends the bars and the subscriber are a process of their own
(worker/tools/bench_subscriber.py), as real ones are, so the worker's event loop does the
worker's work only. Right after each measured burst, while the worker idles, the engine
alone forecasts windows of the same length in that burst's very batch sizes (`--repeats`
times, the median kept), on the worker's inference thread: every burst's engine-only time
is taken beside it, under the same conditions, not minutes later when a shared machine may
run at another speed.

Target: at a 256-symbol burst the pipeline adds at most 20 % + 10 ms over engine compute:
a burst's last forecast arrives within 1.2 x the engine time of that burst's batches
+ 10 ms (median over the measured bursts; the worst burst is shown too).
"""
from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence
from pathlib import Path

import numpy as np

from kronos_rt.engine_process import EngineProcess
from kronos_rt.features import COLUMNS
from worker.contracts import events
from worker.tools import TAPE
from worker.tools.tables import format_columns
from worker.config import ModelRef, Settings, engine_threads
from worker.errors import ConfigError
from worker.adapters.kafka import ensure_topics
from worker.tools.tape import fan_out, read_tape
from worker.pipeline.inference import close_engine
from worker.pipeline.windows import WindowStore
from worker.tools.bench_subscriber import Subscriber

log = logging.getLogger(__name__)

TARGET_RATIO, TARGET_MS = 1.2, 10.0


@dataclass
class BenchResult:
    symbols: int
    bursts: int
    forecasts: int
    p50_ms: float                    # per forecast: bar -> forecast
    p99_ms: float
    forecasts_per_s: float
    burst_batches: list[list[int]]   # the worker's batch sizes, per measured burst
    burst_ms: list[float]            # per measured burst: first bar sent -> last forecast received
    engine_ms: dict[int, float]      # batch size -> median engine-only compute over the bursts, ms
    engine_after_ms: list[float]     # per measured burst: the engine alone on its batch sizes, timed right after it
    worker_inference_ms: list[float]  # per measured burst: the worker's own inference time, summed
    stages_ms: dict[str, Sequence[float]]  # per forecast: the worker's latency_ms fields (receive, queue, ...)
    loop_cpu_ms: list[float] = field(default_factory=list)  # per measured burst: CPU of the event-loop thread
    rss_mib: list[float] = field(default_factory=list)  # after each measured burst: this process's RSS
    scores: int | None = None        # --scoring: score.v1 events the worker published (None: scoring off)
    shadow_forecasts: int | None = None  # --shadow: shadow forecasts published (None: no shadow)
    redis_ms: list[float] | None = None  # Redis alone: one burst's upserts in one pipeline, per repeat
    # per measured burst: (bars sent -> first batch begins, last batch ends -> last forecast
    # received, the engine idle between batches), ms
    phases_ms: list[tuple[float, float, float]] = field(default_factory=list)
    # --inference process: per measured burst, the engine's own compute in its process over the
    # burst's batches (the worker's inference less the hand-over), and that process's RSS after it
    engine_process_ms: list[float] = field(default_factory=list)
    engine_rss_mib: list[float] = field(default_factory=list)

    def engine_burst_ms(self, i: int) -> float:
        """Engine-only time for burst i's batches, one after another (timed right after it)."""
        return self.engine_after_ms[i]

    def overhead_ratios(self) -> list[float]:
        """Per burst: (burst time - 10 ms) / engine time; the target is <= 1.2."""
        return [(self.burst_ms[i] - TARGET_MS) / self.engine_burst_ms(i) for i in range(self.bursts)]

    @property
    def passed(self) -> bool:
        return statistics.median(self.overhead_ratios()) <= TARGET_RATIO

    def table(self) -> str:
        engine = [self.engine_burst_ms(i) for i in range(self.bursts)]
        ratios = self.overhead_ratios()
        worst = max(range(self.bursts), key=lambda i: ratios[i])
        sizes = sorted({b for bs in self.burst_batches for b in bs})
        rows = [
            ("symbols per burst", f"{self.symbols}"),
            ("measured bursts", f"{self.bursts}"),
            ("forecasts", f"{self.forecasts}"),
            ("worker batches per burst", "; ".join("+".join(str(b) for b in bs) for bs in self.burst_batches)),
            ("bar -> forecast p50 / p99", f"{self.p50_ms:.1f} / {self.p99_ms:.1f} ms"),
            ("forecasts/s (during bursts)", f"{self.forecasts_per_s:,.1f}"),
            ("engine-only ms by batch size", ", ".join(f"{b}: {self.engine_ms[b]:.1f}" for b in sizes)),
            ("per forecast, median / max: " + ", ".join(self.stages_ms),
             ", ".join(f"{statistics.median(v):.0f} / {max(v):.0f}" for v in self.stages_ms.values()) + " ms"),
            ("burst: last forecast (median)", f"{statistics.median(self.burst_ms):.1f} ms"),
            ("burst: engine-only, same batches (median)", f"{statistics.median(engine):.1f} ms"),
            ("burst: the worker's own inference (median)", f"{statistics.median(self.worker_inference_ms):.1f} ms"),
            ("pipeline overhead per burst (median)",
             f"{statistics.median(b - e for b, e in zip(self.burst_ms, engine)):.1f} ms"),
            ("pipeline overhead per symbol (median)",
             f"{statistics.median(b - e for b, e in zip(self.burst_ms, engine)) / self.symbols:.3f} ms"),
            ("(burst - 10 ms) / engine: median, worst",
             f"{statistics.median(ratios):.3f}, {ratios[worst]:.3f} (burst {worst + 1})"),
            (f"target: median <= {TARGET_RATIO:.1f}", "PASS" if self.passed else "FAIL"),
        ]
        if self.phases_ms:
            rows.insert(-2, ("burst: bars sent -> first batch, engine idle between batches, last batch -> last "
                             "forecast (medians)",
                             " / ".join(f"{statistics.median(p[k] for p in self.phases_ms):.1f}" for k in (0, 2, 1))
                             + " ms"))
        if self.redis_ms:
            rows.append(("Redis alone: one burst's upserts, pipelined (median, max)",
                         f"{statistics.median(self.redis_ms):.1f}, {max(self.redis_ms):.1f} ms"))
        if self.loop_cpu_ms:
            rows.insert(-2, ("event-loop CPU per burst: median (per symbol; the worker's: "
                             "feed and subscriber out of process)",
                             f"{statistics.median(self.loop_cpu_ms):.1f} ms "
                             f"({statistics.median(self.loop_cpu_ms) / self.symbols:.3f} ms)"))
        if self.rss_mib:
            rows.insert(-2, ("worker process RSS after each burst: first, half-way, last, max",
                             _rss_row(self.rss_mib)))
        if self.engine_process_ms:
            rows.insert(rows.index(next(r for r in rows if r[0].startswith("burst: the worker's own"))) + 1,
                        ("burst: of which the engine's own compute in its process (median)",
                         f"{statistics.median(self.engine_process_ms):.1f} ms"))
        if self.engine_rss_mib:
            rows.insert(-2, ("engine process RSS after each burst: first, half-way, last, max",
                             _rss_row(self.engine_rss_mib)))
        if self.scores is not None:
            rows.insert(3, ("scores published (scoring on)", f"{self.scores}"))
        if self.shadow_forecasts is not None:
            rows.insert(3, ("shadow forecasts (shadow on; each burst sent once it is idle)",
                            f"{self.shadow_forecasts}"))
        return format_columns(rows)


def _rss_row(mib: list[float]) -> str:
    """First, half-way, last and largest RSS: whether it grows, and whether it levels off."""
    return f"{mib[0]:.0f}, {mib[len(mib) // 2]:.0f}, {mib[-1]:.0f}, {max(mib):.0f} MiB"


def _engine_and_ref(args, folder: Path):
    """The engine (in a process of its own with --inference process) and its ModelRef: --model,
    else the random-weight --shape (saved to `folder` first for a process to load)."""
    from kronos_rt import Engine
    from kronos_rt.engine import resolve_device, resolve_dtype
    from worker.pipeline.inference import build_engine

    if args.model:
        return build_engine(Settings(model=args.model, tokenizer=args.tokenizer or "auto", device=args.device,
                                     dtype=args.dtype, max_context=args.max_context or 512, inference=args.inference,
                                     engine_threads=args.engine_threads))
    from kronos_rt.shapes import random_pair

    device = resolve_device(args.device)
    model, tokenizer, max_context = random_pair(args.shape, seed=0)
    ref = ModelRef(f"random-{args.shape}", "seed0", "seed0")
    if args.inference == "process":
        model.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "tokenizer")
        engine, _ = build_engine(Settings(model=str(folder / "model"), tokenizer=str(folder / "tokenizer"),
                                          device=args.device, dtype=args.dtype,
                                          max_context=args.max_context or max_context, inference="process",
                                          engine_threads=args.engine_threads))
        return engine, ref
    import torch

    torch.set_num_threads(engine_threads(args.engine_threads))  # as build_engine does
    engine = Engine(model, tokenizer, device=device, dtype=resolve_dtype(args.dtype, device),
                    max_context=args.max_context or max_context)
    return engine, ref


async def _warm_history(redis_url: str, prefix: str, lookback: int, tape) -> None:
    """Write each symbol's history straight into its Redis window (no Kafka, no forecasts)."""
    from worker.adapters import redis_connect

    client = redis_connect.connect(redis_url)
    store = WindowStore(client, prefix, lookback)
    try:
        # One pipelined round trip per bar index (one bar of every symbol: distinct symbols),
        # so 5 000 symbols x 400 bars take seconds, not minutes of single round trips.
        for _, rows in tape.groupby("n", sort=True):
            bars = [(events.parse_bar(events.dumps(bar)), 0) for _, bar, _ in _bars(rows)]
            for i in range(0, len(bars), 2000):
                chunk = bars[i:i + 2000]
                for (bar, offset), reply in zip(chunk, await store.upsert_ahead(chunk)):
                    await store.apply(bar, offset, reply)
    finally:
        await redis_connect.close(client)


async def _delete_prefix(redis_url: str, prefix: str) -> None:
    """Leave a shared Redis as it was: drop every key the bench's worker wrote."""
    from worker.adapters import redis_connect

    client = redis_connect.connect(redis_url)
    try:
        await redis_connect.delete_prefix(client, prefix)
    finally:
        await redis_connect.close(client)


async def _time_redis(redis_url: str, prefix: str, lookback: int, tape, repeats: int) -> list[float]:
    """Redis alone, after the bursts: each repeat upserts the next bar of every symbol in one
    pipelined round trip (as the worker does a burst; a Cluster splits it per master) and
    applies the replies. ms per repeat."""
    from worker.adapters import redis_connect

    client = redis_connect.connect(redis_url)
    store = WindowStore(client, prefix, lookback)
    by_time: dict = {}
    for _, bar, _ in _bars(tape):
        by_time.setdefault(bar["ts"], []).append(events.parse_bar(events.dumps(bar)))
    out = []
    try:
        for i, (_, bars) in enumerate(sorted(by_time.items())):
            items = [(bar, i) for bar in bars]
            t0 = time.perf_counter()
            for (bar, off), reply in zip(items, await store.upsert_ahead(items)):
                await store.apply(bar, off, reply)
            if i >= lookback:  # the windows are full: the steady state of a live burst
                out.append((time.perf_counter() - t0) * 1000)
            if len(out) >= repeats:
                break
        await redis_connect.delete_prefix(client, prefix)
    finally:
        await redis_connect.close(client)
    return out


def _bars(tape):
    from worker.tools.tape import bar_events

    return bar_events(tape)


async def run_bench(args, topology: str = "single") -> BenchResult:
    """One bench run; topology "cluster": on a local 3-master Redis Cluster started for it
    (worker/tools/redis_ha.py), else on --redis or a private redis-server."""
    from worker.app.worker import Worker
    from worker.tools.services import EmbeddedBroker, RedisServer

    with contextlib.ExitStack() as stack:
        brokers = args.brokers or stack.enter_context(EmbeddedBroker()).bootstrap
        if topology == "cluster":
            from worker.tools.redis_ha import LocalCluster

            redis_url = stack.enter_context(LocalCluster(masters=3)).url
        else:
            redis_url = args.redis or stack.enter_context(RedisServer()).url
        u = uuid.uuid4().hex[:8]
        bars_topic, fc_topic = f"bench-bars-{u}", f"bench-fc-{u}"
        scores_topic = f"bench-scores-{u}" if args.scoring else ""
        await ensure_topics(brokers, {bars_topic: args.partitions, fc_topic: args.partitions,
                                      **({scores_topic: args.partitions} if scores_topic else {})})

        tape = read_tape(args.tape, symbol="BENCH")
        history = args.lookback
        sent_bursts = args.warmup_bursts + args.bursts
        need = history + sent_bursts
        if len(tape) < need:
            raise SystemExit(f"tape has {len(tape)} bars; need lookback + warm-up bursts + bursts = {need}")
        synthetic = fan_out(tape.iloc[:need].reset_index(drop=True), args.symbols, base="B")
        synthetic["n"] = synthetic.groupby("symbol").cumcount()
        prefix = f"bench-{u}"
        log.info("writing %d bars of warm history for %d symbols", history, args.symbols)
        await _warm_history(redis_url, prefix, args.lookback, synthetic[synthetic["n"] < history])

        engine, ref = _engine_and_ref(args, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))))
        stack.callback(close_engine, engine)  # its process, with --inference process
        shadow = {}
        if args.shadow:  # the same shape with other random weights, as a candidate version
            from kronos_rt.shapes import random_pair

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-shadow-")))
            model, tokenizer, _ = random_pair(args.shape, seed=1)
            model.save_pretrained(folder / "candidate")
            tokenizer.save_pretrained(folder / "tokenizer")
            shadow = dict(shadow=str(folder / "candidate"), tokenizer=str(folder / "tokenizer"),
                          shadow_max_queue=max(64, 4 * args.symbols))
        settings = Settings(
            brokers=brokers, redis=redis_url, redis_prefix=prefix, group=f"bench-{u}", bars_topic=bars_topic,
            forecasts_topic=fc_topic, dlq_topic=f"bench-dlq-{u}", lookback=args.lookback,
            min_history=min(args.lookback, 64), pred_len=args.pred_len, max_context=engine.max_context,
            temperature=1.0, top_k=1, top_p=1.0, sample_count=1, max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms, metrics_port=0, max_queue=max(4096, 4 * args.symbols),
            worker_id="bench", device=str(engine.device), inference=args.inference,
            engine_threads=args.engine_threads,
            # --scoring: every forecast stored for scoring, each bar claims the stored steps it
            # realizes (pipelined with its upsert), scores published, calibrated bands served.
            scores_topic=scores_topic, calibration_window=256 if args.scoring else 0, **shadow,
        )
        worker = Worker(settings, engine=engine, model_ref=ref)
        sizes: list[int] = []
        inference_s: list[float] = []
        ended: list[float] = []  # time.time() when each batch's compute returned

        in_process: list[float] = []  # --inference process: each batch's compute in the engine's process

        def observe(items, seconds):  # runs on the worker's inference thread
            sizes.append(len(items))
            inference_s.append(seconds)
            ended.append(time.time() * 1000)
            if isinstance(engine, EngineProcess):
                in_process.append(engine.last_compute_s)

        worker.observe_batches(observe)
        task = asyncio.create_task(worker.run())
        await worker.ready()
        if task.done():
            task.result()

        # The forecasts' subscriber is another process, as a real one is: the event loop here
        # is the worker's, and its CPU time per burst counts the worker only.
        # It is also the feed that publishes each burst's bars, as a real feed is another
        # process: the worker's loop does not pay for sending them.
        subscriber = Subscriber(brokers, fc_topic, args.timeout_s, bars_topic=bars_topic)
        await subscriber.start()
        # per forecast, as 8-byte doubles: 100 000 forecasts in Python floats would be ~16 MiB of
        # the RSS reported as the worker's
        latencies = array.array("d")
        burst_ms, burst_batches, burst_inference, loop_cpu, rss = [], [], [], [], []
        engine_after, engine_runs = [], {}  # per burst; batch size -> its runs
        child_ms, child_rss = [], []  # per burst, --inference process
        # per burst: (bars sent -> first batch begins, last batch ends -> last forecast, engine idle between), ms
        phases = []
        windows = _engine_windows(synthetic, history, args, worker)
        stages: dict[str, array.array] = {}
        try:
            for burst in range(sent_bursts):
                # Live bars come minutes apart: the shadows run in between, so a burst is sent
                # once they are idle (what a shadow costs the primary is then what remains of
                # a shadow batch the burst may still meet).
                while worker.shadows is not None and worker.shadows.pending:
                    await asyncio.sleep(0.01)
                warmup = burst < args.warmup_bursts
                first_batch = len(sizes)
                rows = synthetic[synthetic["n"] == history + burst]
                # Encoded and handed to the feed before the burst starts: it measures the
                # pipeline, not this loop.
                records = [(sym.encode(), events.dumps(bar)) for sym, bar, _ in _bars(rows)]
                subscriber.expect(len(rows), records)
                # The worker's event loop is this thread: its CPU time is the pipeline's own work,
                # apart from the inference thread's; the bars are sent and the forecasts read in
                # the subscriber's process.
                cpu0 = time.thread_time()
                sent, received = await subscriber.burst()  # sent: when the feed began sending every bar
                cpu_ms = (time.thread_time() - cpu0) * 1000
                if not warmup:
                    last = max(ms for ms, _, _ in received)
                    for now_ms, _, latency in received:
                        latencies.append(now_ms - sent)
                        for k, v in latency.items():
                            stages.setdefault(k, array.array("d")).append(float(v))
                    loop_cpu.append(cpu_ms)
                    rss.append(_rss_mib())
                    burst_ms.append(last - sent)
                    burst_batches.append(sizes[first_batch:])
                    burst_inference.append(sum(inference_s[first_batch:]) * 1000)
                    if isinstance(engine, EngineProcess):
                        child_ms.append(sum(in_process[first_batch:]) * 1000)
                        child_rss.append(_rss_mib(engine.pid))
                    # Where the burst's time beyond its batches went: before the first batch
                    # began, between batches (the engine idle), after the last one ended.
                    began = ended[first_batch] - inference_s[first_batch] * 1000
                    phases.append((began - sent, last - ended[-1],
                                   ended[-1] - began - sum(inference_s[first_batch:]) * 1000))
                    # The engine alone, now, on this burst's batch sizes, on the worker's own
                    # inference thread (its memory arena and thread state; the worker idles:
                    # nothing waits for a batch, its loop waits on the broker).
                    timed = await worker.parts.batcher.run_in_thread(
                        _time_engine, engine, windows, args, burst_batches[-1])
                    for size, runs in timed.items():
                        engine_runs.setdefault(size, []).extend(runs)
                    engine_after.append(sum(statistics.median(timed[b]) for b in burst_batches[-1]))
        finally:
            scores = worker.scoring.published if worker.scoring is not None else None
            shadow_forecasts = None if worker.shadows is None else int(sum(
                sample.value for metric in worker.metrics.registry.collect()
                if metric.name == "kronos_rt_shadow_forecasts" for sample in metric.samples
                if sample.name.endswith("_total")))
            await subscriber.stop()
            worker.stop()
            await task
            await _delete_prefix(redis_url, prefix)
        redis_ms = await _time_redis(redis_url, f"{prefix}-redis", args.lookback, synthetic,
                                     max(5, args.repeats))
        engine_ms = {size: statistics.median(runs) for size, runs in engine_runs.items()}
        return BenchResult(
            symbols=args.symbols, bursts=args.bursts, forecasts=len(latencies),
            p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)),
            forecasts_per_s=len(latencies) / max(1e-9, sum(burst_ms) / 1000),
            burst_batches=burst_batches, burst_ms=burst_ms, engine_ms=engine_ms,
            worker_inference_ms=burst_inference, stages_ms=stages, scores=scores, loop_cpu_ms=loop_cpu, rss_mib=rss,
            shadow_forecasts=shadow_forecasts, redis_ms=redis_ms, engine_after_ms=engine_after, phases_ms=phases,
            engine_process_ms=child_ms, engine_rss_mib=child_rss,
        )


def _rss_mib(pid: int | str = "self") -> float:
    """A process's resident memory, this one's by default (Linux /proc; 0 where there is none)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _engine_windows(synthetic, history, args, worker) -> list[tuple]:
    """(values, times, horizon) of every symbol's last window: what the engine alone forecasts."""
    cols = list(COLUMNS)
    windows = []
    for sym, g in synthetic.groupby("symbol", sort=True):
        last = args.warmup_bursts + args.bursts
        g = g.iloc[last: last + history]  # the window of the last burst
        t = g["time"].to_numpy().astype("datetime64[s]")
        windows.append((np.asfortranarray(g[cols].to_numpy()), t, t[-1] + np.arange(1, args.pred_len + 1)
                        * np.timedelta64(int(worker.interval.total_seconds()), "s")))
    return windows


def _time_engine(engine, windows, args, batches) -> dict[int, list[float]]:
    """Batch size -> `--repeats` engine-only times (ms) for each size in `batches`, windows
    of the burst's length in the worker's sampling."""
    from kronos_rt import SamplingParams

    sampling = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, sample_count=1)
    out: dict[int, list[float]] = {}
    for size in sorted(set(batches)):
        chosen = [windows[i % len(windows)] for i in range(size)]
        runs = out[size] = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            engine.forecast([w[0] for w in chosen], [w[1] for w in chosen], [w[2] for w in chosen],
                            args.pred_len, sampling)
            if isinstance(engine, EngineProcess):  # the engine alone: its own time in its process,
                runs.append(engine.last_compute_s * 1000)  # without the hand-over the worker pays
                continue
            if engine.device.type == "cuda":
                import torch

                torch.cuda.synchronize(engine.device)
            runs.append((time.perf_counter() - t0) * 1000)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", type=int, default=256, help="symbols per burst (default 256)")
    parser.add_argument("--bursts", type=int, default=5, help="measured bursts (one bar per symbol each)")
    parser.add_argument("--warmup-bursts", type=int, default=1,
                        help="bursts sent first and not measured (first-batch allocations, kernel setup)")
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
    parser.add_argument("--inference", default="thread", choices=("thread", "process"),
                        help="where the engine computes, as the worker's --inference: thread (the worker's "
                             "inference thread) or process (a child process of its own); default thread")
    parser.add_argument("--engine-threads", type=int, default=0,
                        help="torch threads of the engine, as the worker's --engine-threads (default 0: one per core but one)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="engine-only timing repeats per batch size, after each measured burst (default 3)")
    parser.add_argument("--brokers", help="Kafka bootstrap servers (default: start an embedded broker)")
    parser.add_argument("--redis", help="Redis URL, any form --redis of the worker takes (default: start a "
                                        "private redis-server)")
    parser.add_argument("--topologies", default="single",
                        help="comma separated: single (--redis or a private server), cluster (a local 3-master "
                             "Redis Cluster started for it); one run each, in this order, tables side by side")
    parser.add_argument("--tape", default=str(TAPE), help="tape the synthetic symbols come from")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up on a burst after this long")
    parser.add_argument("--shadow", action="store_true",
                        help="run a shadow model too (the same shape, other random weights)")
    parser.add_argument("--scoring", action="store_true",
                        help="run with live scoring on: a scores topic and calibrated bands (window 256)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.bursts < 1 or args.warmup_bursts < 0 or args.symbols < 1:
        raise ConfigError("--bursts and --symbols must be >= 1, --warmup-bursts >= 0")
    topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    if not topologies or set(topologies) - {"single", "cluster"}:
        raise ConfigError(f"--topologies {args.topologies!r}: comma separated single, cluster")
    if args.redis:
        from worker.adapters import redis_connect

        redis_connect.parse(args.redis)  # an unknown form: one line before anything starts
    load_before = os.getloadavg()[0]
    results = [(t, asyncio.run(run_bench(args, t))) for t in topologies]
    import torch

    from kronos_rt.bench import processor
    from kronos_rt.engine import resolve_device

    print(f"kronos-rt bench-stream: {processor(resolve_device(args.device))}; torch {torch.__version__}, {args.shape if not args.model else args.model}, "
          f"device {args.device}, lookback {args.lookback}, pred_len {args.pred_len}, max_batch {args.max_batch}, "
          f"max_wait_ms {args.max_wait_ms:g}, scoring {'on' if args.scoring else 'off'}, engine in a {args.inference} "
          f"with {engine_threads(args.engine_threads)} torch threads; {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    for topology, result in results:
        if len(results) > 1 or topology != "single":
            print(f"\nRedis: {topology}" + (" (local, 3 masters)" if topology == "cluster" else ""))
        print(result.table())
    return 0

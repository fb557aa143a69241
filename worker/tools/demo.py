"""`kronos-rt demo`: the whole pipeline on one machine, in one command.

Starts an embedded Kafka-protocol broker (Tansu) and a private Redis server, takes a model
from the registry (a real one when present, else a clearly labelled random-weight demo
model it creates), runs a worker, replays the bundled A-share tape for several synthetic
symbols at full speed, shows progress, writes the replay report, prints a summary and
stops everything it started.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.errors import ConfigError, StartupError
from worker.tools import TAPE

DEMO_NAME = "demo-random"
TOPICS = {"bars": "demo.bars.5m", "forecasts": "demo.forecasts.5m", "dlq": "demo.bars.dlq"}

log = logging.getLogger("kronos_rt.demo")


@dataclass
class DemoResult:
    forecasts: int
    expected: int
    bars: int
    symbols: int
    p50_ms: float
    p99_ms: float
    seconds: float
    report: Path | None
    model: str
    random_weights: bool


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", type=int, default=8, help="synthetic symbols fanned out from the tape (default 8)")
    parser.add_argument("--bars", type=int, default=120, help="bars replayed per symbol (default 120)")
    parser.add_argument("--speed", default="1200",
                        help="replay speed: a multiple of real time (default 1200: a 5-minute bar every 0.25 s; "
                             "closed-market pauses are shortened to one bar), or max for one burst "
                             "(latency then includes the backlog)")
    parser.add_argument("--model", default=None,
                        help="registry NAME[@VERSION] to use; default: a real model in the registry if any, "
                             f"else a random-weight '{DEMO_NAME}' model created for the demo")
    parser.add_argument("--shape", default="mini", choices=("mini", "small", "base"),
                        help="shape of the random demo model (default mini: fast on a CPU)")
    parser.add_argument("--registry", default=None, help="model registry root (default $KRONOS_RT_REGISTRY or ~/.kronos-rt/registry)")
    parser.add_argument("--out", default=None, help="where the report goes (default: a new folder under ./kronos-rt-demo)")
    parser.add_argument("--lookback", type=int, default=96, help="bars kept per symbol and fed to the model")
    parser.add_argument("--min-history", type=int, default=48,
                        help="bars a symbol needs before its first forecast (the demo waits for them)")
    parser.add_argument("--pred-len", type=int, default=12, help="future bars forecast each time")
    parser.add_argument("--sample-count", type=int, default=2, help="sample paths per forecast (quantile bands)")
    parser.add_argument("--device", default="auto", help="torch device: auto (GPU if any), cpu, cuda:N")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--view-port", type=int, default=8050,
                        help="port of the live forecast page (`kronos-rt view`) while the demo runs; a free one "
                             "if it is taken; -1: no page")
    parser.add_argument("--redis", default=None,
                        help="Redis URL instead of a private redis-server, any form the worker takes "
                             "(redis://, redis+sentinel://, redis+cluster://; docs/REDIS.md); the demo's keys "
                             "are removed afterwards")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Failures (no redis-server, no CUDA, Ctrl-C, ...) reach `kronos-rt`'s one error printer.
    result = asyncio.run(run_demo(args))
    print(summary_text(result))
    return 0 if result.forecasts >= result.expected else 1


class DemoError(StartupError):
    pass


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_text(r: DemoResult) -> str:
    lines = [
        "",
        "kronos-rt demo summary",
        f"  model            {r.model}" + ("  (RANDOM WEIGHTS: forecasts are meaningless, the pipeline is real)" if r.random_weights else ""),
        f"  bars replayed    {r.bars} ({plural(r.symbols, 'symbol')})",
        f"  forecasts        {r.forecasts} of {r.expected} expected",
        f"  latency total    p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms (bar's Kafka timestamp -> forecast published)",
        f"  wall time        {r.seconds:.1f} s",
        f"  report           {r.report / 'report.md' if r.report else '(not written)'}",
    ]
    return "\n".join(lines)


def pick_model(registry, requested: str | None, shape: str):
    """A real model in the registry if there is one, else the random demo model (created once)."""
    if requested:
        return registry.resolve(requested)
    versions = registry.list()
    real = [v for v in versions if not v.metadata.get("random_weights")]
    if real:
        return registry.resolve(f"{real[-1].name}@latest")
    if not any(v.name == DEMO_NAME for v in versions):
        print(f"demo: no real model in the registry at {registry.root}; creating '{DEMO_NAME}' "
              f"(Kronos-{shape} shape, RANDOM weights, labelled as such)")
        registry.init(DEMO_NAME, shape=shape, seed=0)
    return registry.resolve(f"{DEMO_NAME}@latest")


async def run_demo(args: argparse.Namespace) -> DemoResult:
    from kronos_rt.registry import Registry, default_root
    from worker.tools import report as report_mod
    from worker.app.worker import Worker
    from worker.config import Settings
    from worker.tools.replay import replay
    from worker.adapters.kafka import ensure_topics
    from worker.tools.services import EmbeddedBroker, RedisServer

    from kronos_rt.engine import resolve_device

    t0 = time.monotonic()
    if args.symbols < 1 or args.bars < 1:
        raise ConfigError("--symbols and --bars must be >= 1")
    resolve_device(None if args.device == "auto" else args.device)  # no CUDA: say so before starting anything
    registry = Registry(Path(args.registry) if args.registry else default_root())
    mv = pick_model(registry, args.model, args.shape)
    random_weights = bool(mv.metadata.get("random_weights"))
    # Named now, created only when the report is written: a failed run leaves no empty folder.
    out = Path(args.out) if args.out else Path("kronos-rt-demo") / time.strftime(f"run-%Y%m%d-%H%M%S-{os.getpid()}")

    from worker.adapters import redis_connect
    from worker.errors import hide_password

    given = getattr(args, "redis", None)
    if given:
        redis_connect.parse(given)  # an unknown form: one line, before anything starts
    broker, redis_server, view = EmbeddedBroker(), RedisServer(), None
    if not given:
        try:
            redis_server.start()
        except (RuntimeError, FileNotFoundError) as exc:
            raise DemoError(f"cannot start a Redis server: {exc}. On Debian/Ubuntu: apt-get install -y redis-server") from exc
    redis_url = given or redis_server.url
    prefix = f"kronos-rt-demo-{os.getpid()}" if given else "krt"  # a borrowed Redis gets its keys back clean
    try:
        broker.start()
        print(f"demo: broker {broker.bootstrap}, redis {hide_password(redis_url)}, model {mv.name}@{mv.version}")
        await ensure_topics(broker.bootstrap, {TOPICS["bars"]: 4, TOPICS["forecasts"]: 4, TOPICS["dlq"]: 1})

        settings = Settings(brokers=broker.bootstrap, group="kronos-rt-demo", bars_topic=TOPICS["bars"],
                            forecasts_topic=TOPICS["forecasts"], dlq_topic=TOPICS["dlq"],
                            redis=redis_url, redis_prefix=prefix,
                            model=f"{mv.name}@latest", tokenizer="auto", registry=str(registry.root),
                            lookback=args.lookback, min_history=args.min_history, pred_len=args.pred_len,
                            max_context=mv.max_context,
                            sample_count=args.sample_count, top_p=0.9, max_batch=64, max_wait_ms=5.0,
                            metrics_port=0, sessions="ashare", device=args.device, session_timeout_ms=6000)
        worker = Worker(settings)  # loads the model from the registry, follows its `latest`
        worker_task = asyncio.create_task(worker.run())
        await worker.ready()  # replay once the worker owns its partitions: latency then means something
        if worker_task.done():
            worker_task.result()
            raise DemoError("the worker stopped before it was assigned partitions")
        print(f"demo: worker {settings.worker_id} ready (metrics on http://127.0.0.1:{worker.metrics_port}/metrics)")
        if args.view_port >= 0:
            view = await start_view(broker.bootstrap, args.view_port)
            print(f"demo: live forecast page at {view.url} (open it to watch the forecasts arrive; "
                  "it closes with the demo)", flush=True)

        expected = args.symbols * max(0, args.bars - args.min_history + 1)
        print(f"demo: {_history_note(args)}")
        collector = asyncio.create_task(_collect(broker.bootstrap, expected, args.quiet, args.timeout,
                                                 args.min_history))
        summary = await replay(TAPE, broker.bootstrap, TOPICS["bars"], symbol="SYM", fanout=args.symbols, limit=args.bars,
                               speed=args.speed, progress=not args.quiet, max_gap="5m")
        print(f"demo: {summary.line()}")
        forecasts = await collector
        worker.stop()
        await asyncio.wait_for(worker_task, timeout=60)

        bars, _ = await report_mod.read_topic(broker.bootstrap, TOPICS["bars"])
        report_path = None
        if forecasts:
            report_mod.build_report(forecasts, bars, out, expected=expected)
            report_path = out
        totals = np.array([f["latency_ms"]["total"] for f in forecasts]) if forecasts else np.zeros(1)
        return DemoResult(forecasts=len(forecasts), expected=expected, bars=summary.bars, symbols=summary.symbols,
                          p50_ms=float(np.percentile(totals, 50)), p99_ms=float(np.percentile(totals, 99)),
                          seconds=time.monotonic() - t0, report=report_path,
                          model=f"{mv.name}@{mv.version}", random_weights=random_weights)
    finally:
        if view is not None:
            await view.stop()
        broker.stop()
        redis_server.stop()
        if given:
            client = redis_connect.connect(given)
            try:
                await redis_connect.delete_prefix(client, prefix)
            finally:
                await redis_connect.close(client)


async def start_view(bootstrap: str, port: int):
    """`kronos-rt view` on the demo's topics (worker/view/), on `port`, or on a free one when
    that is taken (another demo, another view)."""
    from worker.view.app import ViewServer
    from worker.view.feed import Feed
    from worker.view.state import ViewState

    async def on(p: int):
        state = ViewState()
        feed = Feed(state, bootstrap, {"bars": TOPICS["bars"], "forecasts": TOPICS["forecasts"]}, history=0)
        view = ViewServer(state, feed, port=p)
        await view.start()
        return view

    try:
        return await on(port)
    except StartupError:  # ViewServer's "cannot serve on ...": the port is taken
        if port == 0:
            raise
        return await on(0)


def _history_note(args) -> str:
    """Why the forecast count sits at 0 at first, and for how long."""
    note = (f"each symbol needs {args.min_history} bars of history before its first forecast; "
            f"{plural(args.symbols * args.bars, 'bar')} to replay")
    try:
        from worker.tools.replay import parse_speed

        speed = parse_speed(args.speed)
    except ValueError:
        speed = None
    if speed:
        # Bars are 5 minutes apart and longer tape pauses are cut to one bar (max_gap="5m").
        note += f", the first forecasts in about {args.min_history * 300 / speed:.0f} s at {speed:g}x"
    return note


async def _collect(bootstrap: str, expected: int, quiet: bool, timeout: float, min_history: int = 0) -> list[dict]:
    """Read forecasts as they are published until all expected ones are in (or timeout)."""
    from aiokafka import AIOKafkaConsumer

    from worker.contracts.events import identity_of, loads

    consumer = AIOKafkaConsumer(TOPICS["forecasts"], bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        await consumer.start()
    except BaseException:  # cancelled (Ctrl-C, the demo failing elsewhere) while connecting
        await consumer.stop()
        raise
    seen: dict[tuple, dict] = {}
    bar = None
    if not quiet:
        from tqdm import tqdm

        # Until the first forecast the bar says what it waits for (no ETA from a rate of zero).
        waiting = f"forecasts (waiting for {min_history} bars per symbol)"
        bar = tqdm(total=expected, unit="fc", desc=waiting, bar_format="{desc}: {n}/{total} [{elapsed}]")
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    f = loads(m.value)
                    key = identity_of(f)
                    if key not in seen and bar is not None:
                        if not seen:  # the first one: from now on the count moves, so rate and ETA mean something
                            bar.reset(total=expected)
                            bar.set_description("forecasts")
                            bar.bar_format = None
                        bar.update(1)
                    seen[key] = f  # a redelivered duplicate replaces its identical twin
    finally:
        if bar is not None:
            bar.close()
        await consumer.stop()
    return list(seen.values())


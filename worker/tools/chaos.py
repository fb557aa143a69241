"""`kronos-rt chaos`: a seeded fault drill against real worker processes, a broker and Redis.

Several worker processes share one consumer group over a multi-partition bar topic; a tape
is replayed at a multiple of real time while a schedule of faults drawn from a seed hits them:
a worker frozen (SIGSTOP) past its session timeout and woken again, kill -9 with a replacement
started at once, SIGTERM with a replacement (a rolling deploy), redis-server killed and
restarted empty, the broker frozen. Afterwards an independent reader (no consumer group, none
of the worker's code but the message parser) reads the bar, forecast and dead-letter topics and
checks what at-least-once promises:
- every eligible bar (its symbol's min_history-th bar and later) has a forecast or a DLQ copy;
- every duplicate is identical to the first copy;
- every forecast equals a fault-free computation on the bar's own window (the same engine,
  in this process);
and measures the output gap each fault caused (the longest pause of any partition's forecasts
around it). Broker and Redis faults need processes this drill started (the default: an embedded
Tansu broker and a private redis-server on free ports); against given --brokers/--redis only the
worker faults are drawn. --static gives each worker slot a --group-instance-id its replacements
reuse (static membership; docs/CHAOS.md has what it does on Tansu).

The pieces are importable: tests/worker/faults/test_chaos.py runs short seeds of the same drill.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PARITY = ROOT / "tests" / "fixtures" / "parity"

WORKER_FAULTS = ("freeze", "kill9", "term")
KINDS = WORKER_FAULTS + ("redis", "broker")
COLUMNS = ("open", "high", "low", "close", "volume", "amount")


# -- the schedule ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    at_s: float                 # seconds after the replay started
    kind: str                   # one of KINDS
    worker: int | None = None   # the worker slot, for worker faults
    hold_s: float = 0.0         # how long a freeze lasts

    def describe(self) -> str:
        what = {"freeze": f"freeze worker {self.worker} (SIGSTOP) for {self.hold_s:.1f}s",
                "kill9": f"kill -9 worker {self.worker}, replacement started at once",
                "term": f"SIGTERM worker {self.worker}, replacement started at once",
                "redis": "kill redis-server, restart it empty",
                "broker": f"freeze the broker (SIGSTOP) for {self.hold_s:.1f}s"}[self.kind]
        return f"t={self.at_s:5.1f}s  {what}"


def draw_schedule(seed: int, n: int, *, spacing_s: float, workers: int, kinds=KINDS, start_s: float = 2.0,
                  freeze_s: float = 4.5, broker_freeze_s: float = 6.0) -> list[Fault]:
    """n faults `spacing_s` apart from `start_s` on, kinds and targets drawn from `seed`.
    Every kind asked for occurs at least once when n allows (drawn in a shuffled round first)."""
    rng = random.Random(seed)
    kinds = list(kinds)
    order: list[str] = []
    while len(order) < n:
        round_ = kinds[:]
        rng.shuffle(round_)
        order += round_
    out = []
    for i, kind in enumerate(order[:n]):
        at = start_s + i * spacing_s
        if kind in WORKER_FAULTS:
            out.append(Fault(at, kind, rng.randrange(workers), freeze_s if kind == "freeze" else 0.0))
        else:
            out.append(Fault(at, kind, None, broker_freeze_s if kind == "broker" else 0.0))
    return out


# -- the processes ---------------------------------------------------------------------------

class WorkerSlot:
    """One place in the group, filled by a worker process; a replacement takes the same slot.
    With static membership the slot has a group instance id of its own, which every process
    filling it uses (as a StatefulSet pod's name or a compose replica's does)."""

    def __init__(self, index: int, args_for, env: dict, log_dir: Path, static: bool = False):
        self.index = index
        self.args_for = args_for      # (worker id, group instance id or None) -> the command line
        self.static = static
        self.env = env
        self.log_dir = log_dir
        self.generation = 0
        self.proc: subprocess.Popen | None = None
        self.old: list[subprocess.Popen] = []  # processes replaced (draining, killed)
        self.replacing: asyncio.Lock | None = None  # one replace_when_gone at a time
        self.logs: list[Path] = []

    @property
    def worker_id(self) -> str:
        return f"chaos-w{self.index}-{self.generation}"

    @property
    def instance_id(self) -> str | None:
        """The slot's --group-instance-id (static membership), the same for each replacement."""
        return f"chaos-w{self.index}" if self.static else None

    def start(self) -> None:
        self.generation += 1
        path = self.log_dir / f"{self.worker_id}.log"
        self.logs.append(path)
        with open(path, "ab") as log:
            self.proc = subprocess.Popen(self.args_for(self.worker_id, self.instance_id), cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def partitions(self) -> list[int]:
        """Partitions of the current process's latest assignment (empty before one)."""
        found = re.findall(r"assigned \[([0-9, ]*)\]", self.log())
        return [] if not found else [int(x) for x in found[-1].split(",") if x.strip()]

    def signal(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def replace(self, sig) -> None:
        """Send `sig` to the current process and start its replacement at once."""
        self.signal(sig)
        if self.proc is not None:
            self.old.append(self.proc)
        self.start()

    async def replace_when_gone(self, sig, timeout_s: float = 60.0) -> None:
        """Send `sig` and start the replacement once the process has exited (at most timeout_s).
        Static membership: one process per instance id at a time, as a StatefulSet or compose
        runs them (two live members with one instance id take the membership from each other).
        A second fault on the slot meanwhile waits, then hits the replacement."""
        if self.replacing is None:
            self.replacing = asyncio.Lock()
        async with self.replacing:
            proc = self.proc
            self.signal(sig)
            deadline = time.monotonic() + timeout_s
            while proc is not None and proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self.replace(sig)

    def terminate(self) -> None:
        """SIGTERM every process of the slot still running (SIGCONT first: a frozen one must hear it)."""
        for p in self.old + [self.proc]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> list[int]:
        """terminate(), then SIGKILL what does not end in time; the exit codes."""
        self.terminate()
        codes = []
        for p in self.old + [self.proc]:
            if p is None:
                continue
            try:
                codes.append(p.wait(timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait(10))
        return codes


def worker_command(worker_id: str, *, brokers: str, redis: str, prefix: str, topics: dict, model_args: list[str],
                   session_timeout_ms: int, extra: list[str], group_instance_id: str | None = None) -> list[str]:
    static = ["--group-instance-id", group_instance_id] if group_instance_id else []
    return [sys.executable, "-m", "worker.cli", "worker", "--brokers", brokers, "--redis", redis,
            "--redis-prefix", prefix, "--group", topics["group"], "--bars-topic", topics["bars"],
            "--forecasts-topic", topics["forecasts"], "--dlq-topic", topics["dlq"], *model_args,
            "--metrics-port", "0", "--worker-id", worker_id, "--session-timeout-ms", str(session_timeout_ms),
            *static, *extra]


# -- the independent reader and checker ------------------------------------------------------

@dataclass
class Findings:
    bars: int = 0
    eligible: int = 0
    forecast: int = 0                 # eligible bars with at least one forecast
    dead_lettered: int = 0            # eligible bars with a DLQ copy and no forecast
    lost: list = field(default_factory=list)          # (symbol, as_of, partition, offset)
    unread_tail: int = 0              # of those, bars after their partition's last forecast (never reached)
    unfinished: list = field(default_factory=list)     # the partitions of those bars
    duplicates: int = 0               # extra copies
    not_identical: list = field(default_factory=list)  # (symbol, as_of) whose copies differ
    unexpected: list = field(default_factory=list)     # forecasts of bars not owed one
    differ: list = field(default_factory=list)         # (symbol, as_of, max abs diff) vs fault-free
    exact: int = 0                    # forecasts bit-equal to the fault-free computation
    gaps: list = field(default_factory=list)           # (fault, longest output gap s) per fault
    log_errors: dict = field(default_factory=dict)     # worker log -> ERROR lines
    timeline: list = field(default_factory=list)       # the workers' state changes, merged (the last 60)
    tracebacks: dict = field(default_factory=dict)     # worker log -> tracebacks

    @property
    def ok(self) -> bool:
        return not (self.lost or self.not_identical or self.unexpected or self.differ or self.tracebacks)

    def lines(self) -> list[str]:
        out = [f"bars {self.bars}, eligible {self.eligible}: forecast {self.forecast}, "
               f"dead-lettered {self.dead_lettered}, LOST {len(self.lost)}"
               + (f" ({self.unread_tail} of them after their partition's last forecast: never reached "
                  f"in the time given, not skipped)" if self.unread_tail else ""),
               f"duplicates {self.duplicates} ({'all identical' if not self.not_identical else f'{len(self.not_identical)} DIFFER'}); "
               f"equal to the fault-free run: {self.forecast - len(self.differ)} of {self.forecast} "
               f"({self.exact} bit-equal); unexpected forecasts {len(self.unexpected)}"]
        for item in self.lost[:20]:
            out.append(f"  lost: {item[0]} {item[1]} (partition {item[2]}, offset {item[3]})")
        for item in self.differ[:10]:
            out.append(f"  differs from the fault-free run: {item[0]} {item[1]} by {item[2]:.3g}")
        for fault, gap in self.gaps:
            out.append(f"  output gap {gap:5.1f}s after {fault.describe()}")
        noisy = {k: v for k, v in self.log_errors.items() if v}
        out.append("worker logs: " + (", ".join(f"{k}: {v} ERROR lines" for k, v in sorted(noisy.items()))
                                      if noisy else "no ERROR lines"))
        for name, n in sorted(self.tracebacks.items()):
            out.append(f"  {name}: {n} TRACEBACKS")
        out.append("verdict: " + ("OK" if self.ok else "FAILED"))
        return out


def eligible_bars(bar_msgs, min_history: int, policy=None) -> dict:
    """(symbol, ts) -> (partition, offset, index in its symbol's series) of every bar owed a
    forecast, read from the bar topic itself: a symbol's min_history-th bar and later (in
    partition order: a symbol lives in one partition). Also returns the series:
    symbol -> [(time, values)] for the fault-free computation."""
    from worker.contracts import events

    series: dict = defaultdict(list)
    owed = {}
    for m in sorted(bar_msgs, key=lambda m: (m.partition, m.offset)):
        try:
            bar = events.parse_bar(m.value, m.key, policy=policy)
        except events.InvalidEvent:
            continue
        s = series[bar.symbol]
        if s and s[-1][0] >= np.datetime64(bar.time, "s"):
            continue  # a repeat or a late bar: the drill's tape has none
        s.append((np.datetime64(bar.time, "s"), bar.values()))
        if len(s) >= min_history:
            owed[(bar.symbol, bar.ts)] = (m.partition, m.offset, len(s) - 1)
    return owed, series


def dlq_sources(dlq_msgs) -> set:
    """(partition, offset) of every bar with a dead-letter copy."""
    out = set()
    for m in dlq_msgs:
        h = {k: v.decode() for k, v in (m.headers or ())}
        if "source.partition" in h and "source.offset" in h:
            out.add((int(h["source.partition"]), int(h["source.offset"])))
    return out


def forecast_array(doc: dict) -> np.ndarray:
    """[P, 6 + 6Q] of a forecast.v1 document: means, then quantiles by level."""
    rows = []
    for h in doc["horizon"]:
        row = [h[c] for c in COLUMNS]
        for c in COLUMNS:
            row += list(h.get("quantiles", {}).get(c, []))
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def check(bar_msgs, forecast_msgs, dlq_msgs, *, min_history: int, lookback: int, reference=None) -> Findings:
    """What the topics say about at-least-once. reference(items) -> forecasts: the fault-free
    computation (worker.inference.Inference.compute) of items with .values, .times, .horizon."""
    owed, series = eligible_bars(bar_msgs, min_history)
    dead = dlq_sources(dlq_msgs)
    f = Findings(bars=len(bar_msgs), eligible=len(owed))
    by_bar = defaultdict(list)
    for m in forecast_msgs:
        doc = json.loads(m.value)
        by_bar[(doc["symbol"], doc["as_of"])].append(doc)
    f.unexpected = sorted(set(by_bar) - set(owed))
    for key, (part, off, _) in sorted(owed.items(), key=lambda kv: kv[1][:2]):
        if key in by_bar:
            f.forecast += 1
        elif (part, off) in dead:
            f.dead_lettered += 1
        else:
            f.lost.append((key[0], key[1], part, off))
    # A lost bar later than every forecast of its partition was never reached (the group did not
    # get there before the drill stopped it); one before a forecast bar was skipped.
    last = defaultdict(lambda: -1)
    for key in by_bar:
        if key in owed:
            last[owed[key][0]] = max(last[owed[key][0]], owed[key][1])
    tail = [part for _, _, part, off in f.lost if off > last[part]]
    f.unread_tail, f.unfinished = len(tail), sorted(set(tail))
    for key, copies in by_bar.items():
        f.duplicates += len(copies) - 1
        if any(c["horizon"] != copies[0]["horizon"] for c in copies[1:]):
            f.not_identical.append(key)
    if reference is not None:
        _compare(f, by_bar, owed, series, lookback, reference)
    return f


def _compare(f: Findings, by_bar: dict, owed: dict, series: dict, lookback: int, reference) -> None:
    from types import SimpleNamespace

    items, keys = [], []
    for key, copies in by_bar.items():
        if key not in owed:
            continue
        _, _, i = owed[key]
        s = series[key[0]][max(0, i + 1 - lookback): i + 1]
        horizon = [np.datetime64(h["ts"], "s") for h in copies[0]["horizon"]]
        items.append(SimpleNamespace(values=np.array([v for _, v in s]), times=np.array([t for t, _ in s]),
                                     horizon=horizon))
        keys.append(key)
    # By window length: the engine makes one call per length in a batch, so few calls in all.
    order = sorted(range(len(items)), key=lambda i: len(items[i].values))
    items, keys = [items[i] for i in order], [keys[i] for i in order]
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        for key, (fc, _) in zip(keys[start:start + 64], reference(chunk)):
            got = forecast_array(by_bar[key][0])
            want = np.asarray(fc.mean, dtype=np.float64)
            if fc.quantiles:  # per column, its values at each level (forecast_array's layout)
                q = np.stack([np.asarray(fc.quantiles[k]) for k in sorted(fc.quantiles)], axis=-1)
                want = np.concatenate([want, q.reshape(len(want), -1)], axis=1)
            if want.shape != got.shape:
                f.differ.append((key[0], key[1], float("inf")))
                continue
            if np.array_equal(got, want):
                f.exact += 1
            elif not np.allclose(got, want, rtol=1e-4, atol=1e-3):
                f.differ.append((key[0], key[1], float(np.nanmax(np.abs(got - want)))))


def output_gaps(forecast_msgs, faults: list[Fault], t0: float, window_s: float = 2.0, *, until: float | None = None,
                unfinished=()) -> list[tuple[Fault, float]]:
    """Per fault: the longest pause between two forecasts of one source partition that
    overlaps [fault, fault + window_s] (Kafka timestamps; t0: the replay's wall-clock start).
    A partition in `unfinished` (owed forecasts it never made) pauses from its last forecast
    until `until` (when the drill stopped waiting), not just between forecasts it made."""
    times = defaultdict(list)
    for m in forecast_msgs:
        doc = json.loads(m.value)
        times[doc["source"]["partition"]].append(m.timestamp / 1000)
    if until is not None:
        for part in unfinished:
            times[part].append(until)
    for v in times.values():
        v.sort()
    out = []
    for fault in faults:
        start = t0 + fault.at_s
        longest = 0.0
        for v in times.values():
            for a, b in zip(v, v[1:]):
                if b > start and a < start + window_s:
                    longest = max(longest, b - a)
        out.append((fault, longest))
    return out


TIMELINE = re.compile(r"assigned \[|revoked \[|rebuil|Redis |broker|stood still|stopped|commits refused|"
                      r"not forecast|Traceback|ERROR")


def timeline(paths, last: int = 60) -> list[str]:
    """The worker logs' state changes, all workers merged in time order (the last `last`)."""
    lines = []
    for p in paths:
        name = Path(p).stem
        for line in Path(p).read_text(errors="replace").splitlines():
            if line[:4].isdigit() and TIMELINE.search(line):
                lines.append(f"{line[11:23]} {name}: {line[24:220]}")
    return sorted(lines)[-last:]


def log_counts(paths) -> tuple[dict, dict]:
    """ERROR lines and tracebacks in each worker log."""
    errors, tracebacks = {}, {}
    for p in paths:
        text = Path(p).read_text(errors="replace")
        errors[Path(p).stem] = sum(1 for line in text.splitlines() if " ERROR " in line)
        n = text.count("Traceback (most recent call last)")
        if n:
            tracebacks[Path(p).stem] = n
    return errors, tracebacks


# -- the drill -------------------------------------------------------------------------------

@dataclass
class DrillConfig:
    seed: int = 1
    workers: int = 3
    partitions: int = 6
    symbols: int = 12
    bars: int = 300
    speed: float = 2400.0
    faults: int = 10
    spacing_s: float = 3.5
    start_s: float = 2.0            # the first fault, seconds after the replay started
    kinds: tuple = KINDS
    session_timeout_ms: int = 3000
    static: bool = False            # static membership: each worker slot keeps its --group-instance-id
    lookback: int = 64
    min_history: int = 32
    pred_len: int = 4
    brokers: str | None = None      # None: an embedded broker this drill starts (and may freeze)
    redis: str | None = None        # None: a private redis-server this drill starts (and restarts)
    model_args: list = field(default_factory=list)  # default: the parity checkpoint, greedy, CPU
    worker_args: list = field(default_factory=list)
    log_dir: str | None = None
    settle_s: float = 90.0          # after the replay: how long the owed forecasts may take
    reference: bool = True          # compare with a fault-free computation (needs the model here)


def default_model_args(cfg: DrillConfig) -> list[str]:
    return ["--model", str(PARITY / "model"), "--tokenizer", str(PARITY / "tokenizer"),
            "--lookback", str(cfg.lookback), "--min-history", str(cfg.min_history),
            "--pred-len", str(cfg.pred_len), "--max-context", "128", "--top-k", "1", "--top-p", "1.0",
            "--device", "cpu", "--dtype", "float32"]


def _say(out, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


async def run_drill(cfg: DrillConfig, out=sys.stdout) -> tuple[list[Fault], Findings]:
    """Start everything, replay, inject the schedule, check; everything started is stopped."""
    import uuid

    from worker.adapters.kafka import ensure_topics, read_topic
    from worker.tools import TAPE
    from worker.tools.replay import prepare, replay
    from worker.tools.services import EmbeddedBroker, RedisServer

    began = time.monotonic()
    kinds = tuple(k for k in cfg.kinds if (k != "broker" or cfg.brokers is None) and (k != "redis" or cfg.redis is None))
    faults = draw_schedule(cfg.seed, cfg.faults, spacing_s=cfg.spacing_s, workers=cfg.workers, kinds=kinds,
                           start_s=cfg.start_s, freeze_s=cfg.session_timeout_ms / 1000 + 1.5)
    _say(out, f"chaos seed {cfg.seed}: {cfg.workers} workers, {cfg.partitions} partitions, {cfg.symbols} symbols x "
              f"{cfg.bars} bars at {cfg.speed:g}x, {'static' if cfg.static else 'dynamic'} membership; "
              f"{len(faults)} faults:")
    for fault in faults:
        _say(out, "  " + fault.describe())
    log_dir = Path(cfg.log_dir or tempfile.mkdtemp(prefix=f"kronos-rt-chaos-{cfg.seed}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    _say(out, f"logs: {log_dir}")
    u = uuid.uuid4().hex[:8]
    topics = {"bars": f"chaos-bars-{u}", "forecasts": f"chaos-fc-{u}", "dlq": f"chaos-dlq-{u}", "group": f"chaos-{u}"}
    model_args = list(cfg.model_args) or default_model_args(cfg)

    with contextlib.ExitStack() as stack:
        broker = None
        if cfg.brokers is None:
            broker = stack.enter_context(EmbeddedBroker(log_path=log_dir / "broker.log"))
        brokers = cfg.brokers or broker.bootstrap
        redis = None
        if cfg.redis is None:
            redis = stack.enter_context(RedisServer())
        redis_url = cfg.redis or redis.url
        await ensure_topics(brokers, {topics["bars"]: cfg.partitions})
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

        def args_for(worker_id: str, instance_id: str | None) -> list[str]:
            return worker_command(worker_id, brokers=brokers, redis=redis_url, prefix=f"chaos-{u}", topics=topics,
                                  model_args=model_args, session_timeout_ms=cfg.session_timeout_ms,
                                  extra=list(cfg.worker_args), group_instance_id=instance_id)

        slots = [WorkerSlot(i, args_for, env, log_dir, static=cfg.static) for i in range(cfg.workers)]
        stack.callback(lambda: [s.stop() for s in slots])
        for s in slots:
            s.start()
        await _wait(lambda: sorted(p for s in slots for p in s.partitions()) == list(range(cfg.partitions)),
                    120, "the workers to share the partitions", slots)
        _say(out, f"[{time.monotonic() - began:.0f}s] workers up: "
                  + ", ".join(f"{s.worker_id} {s.partitions()}" for s in slots))

        rows = prepare(TAPE, symbol="CHS", fanout=cfg.symbols, limit=cfg.bars)
        t0 = time.time()
        feed = asyncio.create_task(replay(rows, brokers, topics["bars"], speed=cfg.speed, max_gap="5m"))
        holds: list[asyncio.Task] = []
        for fault in faults:
            delay = t0 + fault.at_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            _say(out, f"{time.time() - t0:6.1f}s  {fault.describe()}")
            holds.append(asyncio.create_task(_inject(fault, slots, broker, redis)))
        summary = await feed
        await asyncio.gather(*holds)
        _say(out, f"[{time.monotonic() - began:.0f}s] replay done: {summary.bars} bars in {summary.seconds:.1f}s")

        # Wait for the owed forecasts (the reader is independent: no group, from the beginning).
        bar_msgs = [m async for m in read_topic(brokers, topics["bars"], timeout_s=60)]
        owed, _ = eligible_bars(bar_msgs, cfg.min_history)
        deadline = time.monotonic() + cfg.settle_s
        fc_msgs = []
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            with contextlib.suppress(RuntimeError):  # the topic appears with the first forecast
                fc_msgs = [m async for m in read_topic(brokers, topics["forecasts"], timeout_s=60)]
            got = {(d["symbol"], d["as_of"]) for d in (json.loads(m.value) for m in fc_msgs)}
            if set(owed) <= got:
                break
        await asyncio.sleep(1.0)  # stray copies still in flight
        stopped_waiting = time.time()
        for s in slots:  # all at once: they drain side by side
            s.terminate()
        codes = [c for s in slots for c in s.stop()]
        fc_msgs = [m async for m in read_topic(brokers, topics["forecasts"], timeout_s=60)]
        dlq_msgs = []
        with contextlib.suppress(RuntimeError):
            dlq_msgs = [m async for m in read_topic(brokers, topics["dlq"], timeout_s=60)]

    _say(out, f"[{time.monotonic() - began:.0f}s] workers stopped, topics read; checking")
    reference = _reference(model_args) if cfg.reference else None
    findings = check(bar_msgs, fc_msgs, dlq_msgs, min_history=cfg.min_history, lookback=cfg.lookback,
                     reference=reference)
    findings.gaps = output_gaps(fc_msgs, faults, t0, until=stopped_waiting, unfinished=findings.unfinished)
    findings.log_errors, findings.tracebacks = log_counts([p for s in slots for p in s.logs])
    _say(out, f"[{time.monotonic() - began:.0f}s] checked; worker exit codes {codes}")
    for line in findings.lines():
        _say(out, line)
    logs = [p for s in slots for p in s.logs]
    findings.timeline = timeline(logs)
    membership = "static" if cfg.static else "dynamic"
    (log_dir / "findings.txt").write_text("\n".join(
        [f"seed {cfg.seed}, {membership} membership"] + [f.describe() for f in faults] + findings.lines()
        + ["", "timeline:"] + findings.timeline) + "\n")
    return faults, findings


async def _inject(fault: Fault, slots: list[WorkerSlot], broker, redis) -> None:
    if fault.kind == "freeze":
        slot = slots[fault.worker]
        proc = slot.proc
        slot.signal(signal.SIGSTOP)
        await asyncio.sleep(fault.hold_s)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
    elif fault.kind == "kill9":
        slots[fault.worker].replace(signal.SIGKILL)
    elif fault.kind == "term":
        slot = slots[fault.worker]
        if slot.static:
            await slot.replace_when_gone(signal.SIGTERM)
        else:
            slot.replace(signal.SIGTERM)
    elif fault.kind == "redis":
        proc = redis._proc
        proc.kill()
        proc.wait(10)
        redis._proc = None
        await asyncio.get_running_loop().run_in_executor(None, _restart_redis, redis)
    elif fault.kind == "broker":
        proc = broker._proc
        proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(fault.hold_s)
        finally:
            proc.send_signal(signal.SIGCONT)


def _restart_redis(redis) -> None:
    """Start a killed private redis-server again on its port, empty (a new data directory)."""
    redis.stop()
    redis.start()


def _reference(model_args: list[str]):
    """Inference.compute on the workers' model and sampling, in this process: the fault-free run."""
    from worker.config import Settings
    from worker.pipeline.inference import Inference, build_engine
    from worker.ops.metrics import WorkerMetrics

    flags = dict(zip(model_args[0::2], model_args[1::2]))
    s = Settings(model=flags["--model"], tokenizer=flags.get("--tokenizer"), device=flags.get("--device", "cpu"),
                 dtype=flags.get("--dtype", "float32"), max_context=int(flags.get("--max-context", 512)),
                 lookback=int(flags.get("--lookback", 64)), min_history=int(flags.get("--min-history", 32)),
                 pred_len=int(flags.get("--pred-len", 4)), top_k=int(flags.get("--top-k", 1)),
                 top_p=float(flags.get("--top-p", 1.0)))
    engine, ref = build_engine(s)
    inference = Inference(engine, ref, s, WorkerMetrics())
    return inference.compute


async def _wait(cond, timeout: float, what: str, slots) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {s.worker_id}\n{s.log()[-2000:]}" for s in slots)
            raise RuntimeError(f"timed out waiting for {what}\n{tails}")
        await asyncio.sleep(0.2)


# -- the command -----------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    d = DrillConfig()
    parser.add_argument("--seed", type=int, default=d.seed, help="draws the fault schedule")
    parser.add_argument("--runs", type=int, default=1, help="drills to run, seeds SEED, SEED+1, ...")
    parser.add_argument("--faults", type=int, default=d.faults, help="faults per drill")
    parser.add_argument("--spacing-s", type=float, default=d.spacing_s, help="seconds between two faults")
    parser.add_argument("--start-s", type=float, default=d.start_s,
                        help="the first fault, seconds into the replay (forecasts start after --min-history bars)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"fault kinds to draw from ({','.join(KINDS)})")
    parser.add_argument("--workers", type=int, default=d.workers, help="worker processes in the group")
    parser.add_argument("--partitions", type=int, default=d.partitions, help="partitions of the bar topic")
    parser.add_argument("--symbols", type=int, default=d.symbols, help="synthetic symbols replayed")
    parser.add_argument("--bars", type=int, default=d.bars, help="bars per symbol")
    parser.add_argument("--speed", type=float, default=d.speed, help="replay speed, a multiple of real time")
    parser.add_argument("--session-timeout-ms", type=int, default=d.session_timeout_ms,
                        help="the workers' consumer-group session timeout")
    parser.add_argument("--static", action="store_true",
                        help="static group membership: each worker slot has its own --group-instance-id "
                             "(chaos-w0, chaos-w1, ...), which its replacement after kill -9 or SIGTERM reuses")
    parser.add_argument("--brokers", help="a broker to use instead of an embedded one (no broker faults then)")
    parser.add_argument("--redis", help="a Redis to use instead of a private one (no Redis faults then)")
    parser.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for every worker (repeatable), e.g. --worker-arg=--max-batch=8")
    parser.add_argument("--log-dir", help="where the worker and broker logs go (default: a temp dir, printed)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the comparison with a fault-free computation (no model load here)")


def drill_config(args: argparse.Namespace, kinds: tuple, run: int = 0) -> DrillConfig:
    """The drill of run number `run` (seed SEED + run) as the flags say."""
    seed = args.seed + run
    return DrillConfig(seed=seed, workers=args.workers, partitions=args.partitions, symbols=args.symbols,
                       bars=args.bars, speed=args.speed, faults=args.faults, spacing_s=args.spacing_s,
                       start_s=args.start_s, kinds=kinds, session_timeout_ms=args.session_timeout_ms,
                       static=args.static, brokers=args.brokers, redis=args.redis, worker_args=list(args.worker_arg),
                       log_dir=None if args.log_dir is None else str(Path(args.log_dir) / f"seed-{seed}"),
                       reference=not args.no_reference)


def main(args: argparse.Namespace) -> int:
    from worker.errors import ConfigError

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"--kinds {args.kinds!r}: use some of {','.join(KINDS)}")
    for name in ("runs", "faults", "workers", "partitions", "symbols", "bars"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)}: must be at least 1")
    failed = 0
    for run in range(args.runs):
        _, findings = asyncio.run(run_drill(drill_config(args, kinds, run)))
        failed += not findings.ok
    if args.runs > 1:
        print(f"{args.runs - failed} of {args.runs} drills OK")
    return 1 if failed else 0

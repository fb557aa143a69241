"""Helpers for tests that run workers as separate processes (kill -9, SIGTERM, SIGSTOP): a
worker process with its log, waiting for a condition, and a pair of workers in one group."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace
from tests.worker.streams import LOOKBACK, MAX_CONTEXT, MIN_HISTORY, MODEL, PRED_LEN, ROOT, TOKENIZER


class WorkerProcess:
    def __init__(self, name: str, broker: str, redis_url: str, prefix: str, topics: dict, log_dir):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.args = [
            sys.executable, "-m", "worker.cli", "worker", "--brokers", broker, "--redis", redis_url,
            "--redis-prefix", prefix, "--group", topics["group"], "--bars-topic", topics["bars_topic"],
            "--forecasts-topic", topics["forecasts_topic"], "--dlq-topic", topics["dlq_topic"],
            "--model", str(MODEL), "--tokenizer", str(TOKENIZER), "--lookback", str(LOOKBACK),
            "--min-history", str(MIN_HISTORY), "--pred-len", str(PRED_LEN), "--max-context", str(MAX_CONTEXT),
            "--top-k", "1", "--top-p", "1.0", "--device", "cpu", "--dtype", "float32", "--metrics-port", "0",
            "--worker-id", name, "--session-timeout-ms", "3000", "--drain-timeout-s", "10",
        ]
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._from = 0

    def start(self) -> None:
        # log() reads only what this run wrote, so a restart does not see the old assignment.
        self._from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._from)
            return f.read().decode(errors="replace")

    def partitions(self) -> list[int] | None:
        """Partitions of its latest assignment (None before the first one)."""
        found = re.findall(r"assigned \[([0-9, ]*)\]", self.log())
        return None if not found else [int(x) for x in found[-1].split(",") if x.strip()]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self._log.close()


async def wait_for(cond, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in procs)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        await asyncio.sleep(0.1)


def split(a: WorkerProcess, b: WorkerProcess) -> bool:
    """A and B share the 4 partitions between them."""
    return bool(a.partitions() and b.partitions() and sorted(a.partitions() + b.partitions()) == [0, 1, 2, 3])


@contextlib.asynccontextmanager
async def worker_pair(broker: str, redis_url: str, prefix: str, topics: dict, log_dir, extra=lambda name: []):
    """Worker processes A and B in one group (extra(name): more flags each), once they split
    the 4 partitions; both are sent SIGTERM on the way out and their exit codes put in .codes."""
    a, b = (WorkerProcess(f"worker-{n}", broker, redis_url, prefix, topics, log_dir) for n in "ab")
    for p in (a, b):
        p.args += extra(p.name)
        p.start()
    pair = SimpleNamespace(a=a, b=b, procs=(a, b), codes=[])
    try:
        await wait_for(lambda: split(a, b), 60, "a 2+2 split", pair.procs)
        yield pair
    finally:
        pair.codes = [p.terminate() for p in pair.procs]

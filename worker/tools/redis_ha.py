"""Throwaway highly available Redis topologies on free local ports, for tests and benchmarks:
a Redis Cluster (`redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster
create`) and a Sentinel group (a primary, its replicas and three `redis-server --sentinel`).

Each server runs in its own temp dir with no persistence and short failure timeouts, so a
failover takes a second or two; every process is ours and is stopped by its handle (PID).
The service never imports this module.
"""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from worker.tools.services import _log_tail, _redis_ping, _stop_process, free_port


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} not found on PATH; install it with `apt-get install -y redis-server`")
    return exe


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_port() -> int:
    """A free port for a cluster node: at most 55535, with its bus port (+10000) free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class _Node:
    """One redis-server (data node or sentinel) started from a config file in `root`."""

    def __init__(self, root: Path, port: int, lines: list[str], sentinel: bool = False):
        self.port = port
        self.dir = root / str(port)
        self.dir.mkdir()
        self.log = self.dir / "redis.log"
        self.conf = self.dir / "redis.conf"
        base = [f"port {port}", "bind 127.0.0.1", f"dir {self.dir}", f"logfile {self.log}"]
        if not sentinel:
            base += ['save ""', "appendonly no"]
        self.conf.write_text("\n".join(base + lines) + "\n")
        self.sentinel = sentinel
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "_Node":
        cmd = [_exe("redis-server"), str(self.conf)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        return self

    def wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{_log_tail(self.log)}")
            if _redis_ping(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s:\n{_log_tail(self.log)}")

    def kill(self) -> None:
        """kill -9: no shutdown, no last write to replicas."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        _stop_process(self.proc)


class _Group:
    def __init__(self, prefix: str):
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.root = Path(self._dir.name)
        self.nodes: list[_Node] = []

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        self._dir.cleanup()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalCluster(_Group):
    """`masters` masters with `replicas` replicas each, all slots covered. url: the seed nodes."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000):
        super().__init__("kronos-rt-cluster-")
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        lines = ["cluster-enabled yes", f"cluster-node-timeout {node_timeout_ms}",
                 "cluster-require-full-coverage no", "cluster-replica-validity-factor 0"]
        self.nodes = [_Node(self.root, p, lines + [f"cluster-config-file nodes-{p}.conf"]) for p in ports]
        self.url = "redis+cluster://" + ",".join(n.addr for n in self.nodes[:masters])

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait()
        cmd = [_exe("redis-cli"), "--cluster", "create", *(n.addr for n in self.nodes),
               "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.wait_ok(timeout)
        return self

    def cli(self, node: _Node, *args: str) -> str:
        out = subprocess.run([_exe("redis-cli"), "-p", str(node.port), *args], capture_output=True, text=True,
                             timeout=10)
        return out.stdout

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok (every slot served)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            if all("cluster_state:ok" in self.cli(n, "cluster", "info") for n in live):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def primaries(self) -> list[_Node]:
        """The nodes that are masters now (a live node's view)."""
        live = next(n for n in self.nodes if n.proc.poll() is None)
        text = self.cli(live, "cluster", "nodes")
        ports = {int(line.split()[1].split("@")[0].rsplit(":", 1)[1]) for line in text.splitlines()
                 if "master" in line.split()[2] and "fail" not in line.split()[2]}
        return [n for n in self.nodes if n.port in ports]


class LocalSentinel(_Group):
    """A primary, `replicas` replicas and three sentinels watching it as `name`."""

    def __init__(self, name: str = "kronos", replicas: int = 1, down_after_ms: int = 1000):
        super().__init__("kronos-rt-sentinel-")
        self.name = name
        self.primary = _Node(self.root, free_port(), [])
        self.replicas = [_Node(self.root, free_port(), [f"replicaof 127.0.0.1 {self.primary.port}"])
                         for _ in range(replicas)]
        watch = [f"sentinel monitor {name} 127.0.0.1 {self.primary.port} 2",
                 f"sentinel down-after-milliseconds {name} {down_after_ms}",
                 f"sentinel failover-timeout {name} {max(3000, 3 * down_after_ms)}",
                 f"sentinel parallel-syncs {name} 1"]
        self.sentinels = [_Node(self.root, free_port(), watch, sentinel=True) for _ in range(3)]
        self.nodes = [self.primary, *self.replicas, *self.sentinels]
        self.url = "redis+sentinel://" + ",".join(s.addr for s in self.sentinels) + f"/{name}"

    def start(self, timeout: float = 30.0) -> "LocalSentinel":
        deadline = time.monotonic() + timeout
        data = [self.primary, *self.replicas]
        for n in data:
            n.start()
        for n in data:
            n.wait()
        # Sentinels learn the replicas from the primary's INFO (every 10 s after the first):
        # start them once the replicas are attached, so the first INFO already names them.
        want = f"connected_slaves:{len(self.replicas)}"
        while want not in subprocess.run([_exe("redis-cli"), "-p", str(self.primary.port), "info", "replication"],
                                         capture_output=True, text=True, timeout=10).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas did not attach to the primary")
            time.sleep(0.05)
        for n in self.sentinels:
            n.start()
        for n in self.sentinels:
            n.wait()
        # Ready when every sentinel knows the replicas and its two peers.
        while time.monotonic() < deadline:
            if all(self._sentinel_sees(s) for s in self.sentinels):
                return self
            time.sleep(0.1)
        raise RuntimeError("the sentinels did not discover the replicas and each other")

    def _sentinel_sees(self, s: _Node) -> bool:
        out = subprocess.run([_exe("redis-cli"), "-p", str(s.port), "sentinel", "master", self.name],
                             capture_output=True, text=True, timeout=10).stdout.split()
        info = dict(zip(out[0::2], out[1::2]))
        return (info.get("num-slaves") == str(len(self.replicas))
                and info.get("num-other-sentinels") == str(len(self.sentinels) - 1))

    def master_port(self) -> int:
        out = subprocess.run([_exe("redis-cli"), "-p", str(self.sentinels[0].port), "sentinel",
                              "get-master-addr-by-name", self.name], capture_output=True, text=True,
                             timeout=10).stdout.split()
        return int(out[1])

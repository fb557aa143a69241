"""`kronos-rt worker`: run one streaming worker until SIGTERM/SIGINT (SIGHUP: re-check the registry)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from worker import config


def configure(parser: argparse.ArgumentParser) -> None:
    config.configure(parser)
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level")


def main(args: argparse.Namespace) -> int:
    from worker.app.worker import Worker

    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from worker.adapters.kafka_logs import quiet_library_logs

    quiet_library_logs()  # aiokafka's retry and rebalance noise at DEBUG: the worker says each change once
    try:
        settings = config.from_args(args)
    except ValueError as exc:  # a flag or KRONOS_RT_* value that does not parse: exit 2, no traceback
        raise config.ConfigError(str(exc)) from exc
    if settings.device.startswith("cuda"):  # no CUDA: say so before loading anything
        from kronos_rt.engine import resolve_device

        resolve_device(settings.device)

    async def run() -> bool:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        loop.add_signal_handler(signal.SIGHUP, worker.reload)
        return await worker.run()

    return 0 if asyncio.run(run()) else 1

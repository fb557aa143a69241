"""`kronos-rt worker`: run one streaming worker until SIGTERM/SIGINT (SIGHUP: re-check the registry)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from worker import config


def configure(parser: argparse.ArgumentParser) -> None:
    config.configure(parser)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")


def main(args: argparse.Namespace) -> int:
    from worker.app import Worker

    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = config.from_args(args)

    async def run() -> bool:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        loop.add_signal_handler(signal.SIGHUP, worker.reload)
        return await worker.run()

    return 0 if asyncio.run(run()) else 1

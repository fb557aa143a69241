"""`kronos-rt serve`: the HTTP forecast API on its own (no Kafka, no Redis).

The same API mounts inside a streaming worker with `kronos-rt worker --http-port N`, where
it shares the engine with the stream and waits behind it. With `--model NAME@latest` it
follows the registry as the worker does (promotions, rollbacks, SIGHUP).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from worker import config

# The worker's model, sampling, batching and HTTP flags; Kafka and Redis ones do not apply.
FIELDS = ("model", "tokenizer", "registry", "model_poll_s", "device", "dtype", "inference", "engine_threads", "max_context", "pred_len", "temperature", "top_k",
          "top_p", "sample_count", "quantiles", "seed", "max_batch", "max_wait_ms", "interval", "sessions", "calendar_range",
          "worker_id", "api_token", "http_max_queue", "http_max_bars", "http_max_pred_len", "http_max_series",
          "http_max_body_kb", "http_timeout_s", "http_strict", "http_cors")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", dest="http_host", default=None,
                        help="bind address (default: 127.0.0.1; 0.0.0.0 serves other machines)")
    parser.add_argument("--port", dest="http_port", type=int, default=None, help="port (default: 8000; 0 = any free)")
    config.add_flags(parser, FIELDS)  # the worker's own flag builder: same types, help and defaults
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    config.apply_env(parser)  # KRONOS_RT_<FLAG> for each flag


def settings_from(args: argparse.Namespace) -> config.Settings:
    given = {name: getattr(args, name) for name in (*FIELDS, "http_host", "http_port")
             if getattr(args, name, None) is not None}
    given.setdefault("http_port", 8000)
    return config.Settings(**given)


def main(args: argparse.Namespace) -> int:
    from worker.http.server import Standalone
    from worker.pipeline.inference import build_engine, close_engine

    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(args)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        engine, ref = await loop.run_in_executor(None, build_engine, settings)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with Standalone(settings, engine, ref) as api:
                loop.add_signal_handler(signal.SIGHUP, api.reload)  # --model NAME@latest: re-check now
                logging.getLogger("kronos_rt.serve").info(
                    "serving %s@%s on http://%s:%d (docs: /docs)", ref.name, ref.version, settings.http_host, api.port)
                await stop.wait()
        finally:
            close_engine(engine)  # its process, with --inference process

    asyncio.run(run())
    return 0

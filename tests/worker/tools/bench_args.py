"""bench-stream's parsed arguments with some values changed, for tests that call run_bench."""
from __future__ import annotations

import argparse

from worker.tools import bench_stream


def bench_stream_args(**over) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_stream.configure(parser)
    args = parser.parse_args([])
    for k, v in over.items():
        setattr(args, k, v)
    return args

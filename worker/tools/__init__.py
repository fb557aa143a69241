"""Tools around the service: replay a tape, report on a replay, the demo, the stream
benchmark and local broker/Redis helpers. The service itself never imports them; they may
import any worker package but worker.cli."""
from pathlib import Path

# The bundled A-share 5-minute tape (shipped as package data, pyproject.toml): the demo's,
# the benchmarks' and the tests' input.
TAPE = Path(__file__).resolve().parent / "data" / "a_share_5min.csv"

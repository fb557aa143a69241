"""The Redis key schema, in one place.

Every key starts with the deployment's prefix. A symbol's keys share a hash tag
(`{SYMBOL}`) so a window's keys land in one Redis Cluster slot and one Lua script
may touch them all:

    {prefix}:{SYMBOL}:bars               sorted set of bar times (worker/pipeline/windows.py)
    {prefix}:{SYMBOL}:data               hash, bar time -> record;offset
    {prefix}:{SYMBOL}:ver                counter, bumped on every change
    {prefix}:{SYMBOL}:fc                 hash, forecast id -> stored forecast (worker/quality/live.py)
    {prefix}:{SYMBOL}:fcidx              sorted set of forecast ids by as_of (trimming)
    {prefix}:{SYMBOL}:due                sorted set "id#step" by the step's bar time
    {prefix}:{SYMBOL}:scored             hash, "id#step" -> "close;offset" it was scored with
    {prefix}:{SYMBOL}:cal                hash, step -> calibration state of the symbol
    {prefix}:calpool:{GROUP}             hash, step -> calibration state of a symbol pool
    {prefix}:partition:{TOPIC}:{N}       partition marker: present while Redis holds the
                                         windows of that partition (a flush removes it)
    {prefix}:probe                       a write test while Redis refuses writes (expires)
"""
from __future__ import annotations


class RedisKeys:
    def __init__(self, prefix: str):
        self.prefix = prefix

    def window(self, symbol: str) -> list[str]:
        """The bars, data and version keys of one symbol's window, in the order the scripts take."""
        base = f"{self.prefix}:{{{symbol}}}"
        return [f"{base}:bars", f"{base}:data", f"{base}:ver"]

    def forecasts(self, symbol: str) -> list[str]:
        """The stored-forecast keys of one symbol (fc, fcidx, due, scored), in the order the
        scripts of worker/quality/live.py take."""
        base = f"{self.prefix}:{{{symbol}}}"
        return [f"{base}:fc", f"{base}:fcidx", f"{base}:due", f"{base}:scored"]

    def calibration(self, group: str, per_symbol: bool = False) -> str:
        """Calibration state of one symbol (per_symbol) or of a pool of symbols."""
        if per_symbol:
            return f"{self.prefix}:{{{group}}}:cal"
        return f"{self.prefix}:calpool:{{{group}}}"

    def script_layouts(self, sample: str = "SYMBOL") -> dict[str, list[str]]:
        """The keys each Lua script takes together, for a sample symbol: each list must sit in one
        Cluster slot (worker/redis_connect.check_slots). Every other key is used alone."""
        return {"a window": self.window(sample), "a symbol's stored forecasts": self.forecasts(sample)}

    def partition_marker(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:partition:{topic}:{partition}"

    def probe(self) -> str:
        """Written while the worker waits for Redis to accept writes again (expires by itself)."""
        return f"{self.prefix}:probe"

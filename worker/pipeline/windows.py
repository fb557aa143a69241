"""Rolling per-symbol bar windows in Redis, updated atomically by one Lua script.

Layout per symbol (worker/adapters/keys.py; the hash tag keeps all three keys in one Cluster slot):
    bars   sorted set, score = member = epoch seconds of the bar's wall time
    data   hash, epoch seconds -> "open,high,low,close,volume,amount;offset"
    ver    counter, bumped on every change

Bar wall times are naive (Bar.time) and are stored as if they were UTC, truncated
to whole seconds. The store keeps a local copy of each window it has seen. On the
common path (a newer bar, nobody else writing) one EVALSHA updates Redis and the
local copy is appended to in place; any surprise (first touch, version gap after
a rebalance, correction, out-of-order insert) re-reads the whole window with one
more round trip.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from redis.asyncio.client import Pipeline

from worker.adapters import redis_connect
from worker.contracts.events import Bar, epoch_seconds
from worker.adapters.keys import RedisKeys

MAX_LOOKBACK = 4096  # Lua unpack() of the trimmed members must stay well under its C stack limit

# KEYS: bars, data, ver.  ARGV: epoch seconds, value record, offset, lookback.
# Returns {status, length, version, fresh[, stored offset]}; fresh = 1 when the ver key did
# not exist before this call (Redis has no memory of the symbol). A duplicate also returns
# the offset the stored bar came from, so a redelivery of the same message can be told
# from a repeated event.
_UPSERT_LUA = """
local member = ARGV[1]
local score = tonumber(member)
local lookback = tonumber(ARGV[4])
local raw_ver = redis.call('GET', KEYS[3])
local fresh = 0
if not raw_ver then fresh = 1 end
local ver = tonumber(raw_ver or '0')
local len = redis.call('ZCARD', KEYS[1])
local existing = redis.call('HGET', KEYS[2], member)
if existing then
  if string.match(existing, '^(.*);') == ARGV[2] then
    return {'duplicate', len, ver, fresh, string.match(existing, ';(%-?%d+)$')}
  end
  redis.call('HSET', KEYS[2], member, ARGV[2] .. ';' .. ARGV[3])
  ver = redis.call('INCR', KEYS[3])
  return {'corrected', len, ver, fresh}
end
local status = 'appended'
if len > 0 then
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if score < tonumber(newest[2]) then
    if len >= lookback then
      local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
      if score < tonumber(oldest[2]) then
        return {'too_old', len, ver, fresh}
      end
    end
    status = 'inserted'
  end
end
redis.call('ZADD', KEYS[1], score, member)
redis.call('HSET', KEYS[2], member, ARGV[2] .. ';' .. ARGV[3])
len = len + 1
if len > lookback then
  local drop = redis.call('ZRANGE', KEYS[1], 0, len - lookback - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, len - lookback - 1)
  redis.call('HDEL', KEYS[2], unpack(drop))
  len = lookback
end
ver = redis.call('INCR', KEYS[3])
return {status, len, ver, fresh}
"""

# The upsert for several bars of distinct symbols in one call: KEYS in threes, ARGV in fours,
# one reply per bar, each the very reply _UPSERT_LUA gives (the same body, run per bar in
# order). One command and one nested reply per chunk instead of one of each per bar: the
# client packs and parses it in C, not one Python reply at a time.
_UPSERT_MANY_LUA = "local function upsert(KEYS, ARGV)\n" + _UPSERT_LUA + """end
local out = {}
for i = 0, #KEYS / 3 - 1 do
  out[i + 1] = upsert({KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]},
                      {ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4]})
end
return out
"""
# Bars per call of _UPSERT_MANY_LUA: Redis runs a script to its end before anything else, so
# a burst of thousands goes as several calls (still one round trip).
UPSERT_CHUNK = 256

# Consistent snapshot of one window: {version, members (oldest first), records}.
_READ_LUA = """
local ver = redis.call('GET', KEYS[3]) or '0'
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members == 0 then
  return {ver, {}, {}}
end
return {ver, members, redis.call('HMGET', KEYS[2], unpack(members))}
"""


class Upsert(str, enum.Enum):
    """What an upsert did; the values are the Lua script's replies and the metrics' labels."""
    APPENDED = "appended"     # a bar newer than the window's newest
    INSERTED = "inserted"     # an older bar that fits inside the window (out of order)
    CORRECTED = "corrected"   # a new value for a bar time already stored
    DUPLICATE = "duplicate"   # the same value again
    TOO_OLD = "too_old"       # older than the whole (full) window: not stored

    @property
    def forecastable(self) -> bool:
        """Outcomes whose window changed, so the bar gets a forecast."""
        return self in (Upsert.APPENDED, Upsert.INSERTED, Upsert.CORRECTED)


# The script's status reply, bytes or str (decode_responses), to its Upsert: a dict lookup,
# not an Enum call, once per bar.
_STATUS = {**{u.value: u for u in Upsert}, **{u.value.encode(): u for u in Upsert}}


@dataclass(frozen=True, slots=True)
class UpsertResult:
    status: Upsert
    length: int    # window length in Redis after the call
    version: int   # window version in Redis after the call
    lost: bool     # this store had the symbol cached but Redis had forgotten it
    redelivered: bool = False  # duplicate of the very message stored (same Kafka offset): a re-read
    # The local copy took the bar at its end, in order (the live path): the bar is its window's
    # newest, so nothing in it is newer and `latest` is the window it gets forecast on.
    appended: bool = False


@dataclass(frozen=True, slots=True)
class Window:
    times: np.ndarray    # datetime64[s] [L], oldest first
    values: np.ndarray   # float64 [L, 6] open, high, low, close, volume, amount (NaN = missing)
    offsets: np.ndarray  # int64 [L] Kafka offset each bar came from
    version: int

    def __len__(self) -> int:
        return len(self.times)

    def upto(self, t: np.datetime64) -> "Window":
        """The bars at or before t (a re-read bar's own window)."""
        n = int(np.searchsorted(self.times, t, side="right"))
        return Window(self.times[:n], self.values[:n], self.offsets[:n], self.version)


class _Local:
    """One symbol's cached window in buffers of twice the lookback, so appends
    are O(1) and only every `lookback` appends pay for a compaction."""

    __slots__ = ("times", "values", "offsets", "start", "end", "version", "ordered")

    def __init__(self, lookback: int, times, values, offsets, version: int):
        cap = 2 * lookback
        # Redis may still hold a longer window written under a bigger lookback.
        times, values, offsets = times[-lookback:], values[-lookback:], offsets[-lookback:]
        n = len(times)
        self.times = np.empty(cap, dtype=np.int64)
        self.values = np.empty((cap, 6), dtype=np.float64)
        self.offsets = np.empty(cap, dtype=np.int64)
        self.times[:n] = times
        self.values[:n] = values
        self.offsets[:n] = offsets
        self.start, self.end, self.version = 0, n, version
        # Offsets never falling with time (bars read in order, the live case): the oldest
        # offset is then the first, no search needed.
        self.ordered = bool(n < 2 or (np.diff(self.offsets[:n]) >= 0).all())

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, t: int, row, offset: int, lookback: int, version: int) -> None:
        if self.end == len(self.times):
            keep = min(len(self), lookback - 1)
            s = self.end - keep
            self.times[:keep] = self.times[s:self.end]
            self.values[:keep] = self.values[s:self.end]
            self.offsets[:keep] = self.offsets[s:self.end]
            self.start, self.end = 0, keep
        if self.ordered and self.end > self.start and offset < self.offsets[self.end - 1]:
            self.ordered = False
        self.times[self.end] = t
        self.values[self.end] = row
        self.offsets[self.end] = offset
        self.end += 1
        if len(self) > lookback:
            self.start = self.end - lookback
        self.version = version

    def snapshot(self) -> Window:
        sl = slice(self.start, self.end)
        return Window(self.times[sl].astype("datetime64[s]"), self.values[sl].copy(),
                      self.offsets[sl].copy(), self.version)

    def latest(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(times as datetime64[s], values, the oldest offset): copies of what a forecast of
        the newest bar needs, without the snapshot's offsets array."""
        sl = slice(self.start, self.end)
        oldest = int(self.offsets[self.start] if self.ordered else self.offsets[sl].min())
        return self.times[sl].astype("datetime64[s]"), self.values[sl].copy(), oldest


def _lacks(fetched: _Local, local: _Local) -> bool:
    """Redis's window (just re-read) misses a bar of our copy that it should still hold: one
    at or after its oldest bar (older ones were trimmed, or stored elsewhere, rightly)."""
    have = fetched.times[fetched.start:fetched.end]
    if not len(have):
        return len(local) > 0
    mine = local.times[local.start:local.end]
    mine = mine[mine >= have[0]]
    return bool(len(mine)) and not np.isin(mine, have).all()


def _text(x) -> str:
    return x.decode() if isinstance(x, (bytes, bytearray)) else str(x)


def _record(bar: Bar) -> str:
    # repr() round-trips floats exactly, so equal values give equal strings (duplicate check).
    v, a = bar.volume, bar.amount
    return (f"{bar.open!r},{bar.high!r},{bar.low!r},{bar.close!r},"
            f"{'' if v is None else repr(v)},{'' if a is None else repr(a)}")


def _parse_record(rec) -> tuple[list[float], int]:
    vals, _, off = _text(rec).rpartition(";")
    return [float(x) if x else math.nan for x in vals.split(",")], int(off)


class WindowStore:
    """Per-symbol rolling windows of at most `lookback` bars.

    Calls for one symbol should not overlap (the worker handles a partition's
    bars in order); if they do, version checks fall back to re-reading Redis.
    Works with clients created with or without decode_responses.
    """

    def __init__(self, redis, prefix: str, lookback: int):
        if not 1 <= lookback <= MAX_LOOKBACK:
            raise ValueError(f"lookback must be in 1..{MAX_LOOKBACK}, got {lookback}")
        self.redis = redis
        self.lookback = lookback
        self._keys = RedisKeys(prefix)
        self._upsert = redis_connect.register_script(redis, _UPSERT_LUA)
        self._read = redis_connect.register_script(redis, _READ_LUA)
        self._upsert_many = redis.register_script(_UPSERT_MANY_LUA)  # plain pipelines only
        self._cache: dict[str, _Local] = {}
        self._encoded_keys: dict[str, list[bytes]] = {}
        # Bumped by delete(): replies of upsert_ahead taken before it are stale.
        self.generation = 0

    def keys(self, symbol: str) -> list[str]:
        return self._keys.window(symbol)

    async def upsert(self, bar: Bar, offset: int) -> UpsertResult:
        res = await self._upsert(keys=self.keys(bar.symbol), args=self._upsert_args(bar, offset))
        return await self.apply(bar, offset, res)

    async def upsert_ahead(self, items: list[tuple[Bar, int]], also=None) -> list:
        """Run the upsert script for several (bar, offset)s in one round trip (a pipeline,
        in order) and return the raw replies, each to be passed to `apply` later, in order.
        The local copies are not touched until then, so a caller can handle the bars one by
        one as if upserted one by one; use it for bars of distinct symbols.
        also(pipe, bar, offset): queue one more command per bar in the same round trip
        (scoring claims); the replies are then (upsert reply, its reply) pairs."""
        if not items:
            return []
        pipe = self.redis.pipeline(transaction=False)
        if type(pipe) is Pipeline and also is None:
            # Chunks of bars per EVALSHA of the many-bar script (registered with the pipeline,
            # which loads it if Redis lacks it); its replies, flattened, are the per-bar ones.
            pipe.scripts.add(self._upsert_many)
            sha = self._upsert_many.sha
            for i in range(0, len(items), UPSERT_CHUNK):
                keys, args = [], []
                for bar, offset in items[i:i + UPSERT_CHUNK]:
                    keys += self._key_bytes(bar.symbol)
                    args += self._upsert_args(bar, offset)
                pipe.evalsha(sha, len(keys), *keys, *args)
            return [reply for chunk in await redis_connect.execute(self.redis, pipe) for reply in chunk]
        if type(pipe) is Pipeline:
            # The script's own __call__ costs ~10 us a bar (an isinstance check against a typing
            # Protocol): register it with the pipeline once (it loads it if Redis lacks it) and
            # queue plain EVALSHAs, the very commands __call__ would queue.
            pipe.scripts.add(self._upsert)
            sha = self._upsert.sha
            for bar, offset in items:
                pipe.evalsha(sha, 3, *self._key_bytes(bar.symbol), *self._upsert_args(bar, offset))
                if also is not None:
                    await also(pipe, bar, offset)
        else:  # a cluster pipeline (or another client's): the script's own way
            for bar, offset in items:
                await self._upsert(keys=self.keys(bar.symbol), args=self._upsert_args(bar, offset), client=pipe)
                if also is not None:
                    await also(pipe, bar, offset)
        replies = await redis_connect.execute(self.redis, pipe)  # a Cluster splits it per node
        return list(zip(replies[0::2], replies[1::2])) if also is not None else replies

    def _key_bytes(self, symbol: str) -> list[bytes]:
        """keys(symbol), encoded, kept while the symbol's window is (forget drops it)."""
        keys = self._encoded_keys.get(symbol)
        if keys is None:
            keys = self._encoded_keys[symbol] = [k.encode() for k in self.keys(symbol)]
        return keys

    def _upsert_args(self, bar: Bar, offset: int) -> list[bytes]:
        # As bytes, what the client's encoder would make of them: it then passes each through
        # (thousands a burst).
        return [b"%d" % epoch_seconds(bar.time), _record(bar).encode(), b"%d" % offset, b"%d" % self.lookback]

    async def apply(self, bar: Bar, offset: int, res) -> UpsertResult:
        """Bring the local copy up to date with one upsert script's reply (from `upsert`, or
        one of `upsert_ahead`'s, applied in order); the result `upsert` returns."""
        t = epoch_seconds(bar.time)
        status = _STATUS.get(res[0]) or Upsert(_text(res[0]))
        length, version, fresh = int(res[1]), int(res[2]), int(res[3])
        redelivered = status is Upsert.DUPLICATE and len(res) > 4 and int(res[4]) == int(offset)
        local = self._cache.get(bar.symbol)
        # Redis forgot the symbol (flush/eviction) or its counter went backwards.
        lost = local is not None and (fresh == 1 or version < local.version)
        if lost:
            del self._cache[bar.symbol]
            local = None
        result = UpsertResult(status, length, version, lost, redelivered)

        if local is not None:
            if status is Upsert.APPENDED and version == local.version + 1 and length == min(len(local) + 1, self.lookback):
                local.append(t, bar.values(), offset, self.lookback, version)
                return UpsertResult(status, length, version, lost=False, appended=True)
            if status in (Upsert.DUPLICATE, Upsert.TOO_OLD) and version == local.version:
                return result
        elif fresh == 1 and status is Upsert.APPENDED and length == 1:
            # Brand-new (or just lost) symbol: the window is exactly this bar.
            self._cache[bar.symbol] = _Local(self.lookback, np.array([t]), np.array([bar.values()]),
                                             np.array([offset]), version)
            return result
        fetched = await self._fetch(bar.symbol)
        if local is not None and _lacks(fetched, local):
            # A bar we stored is gone though the version went on: a failover onto a replica
            # that never got the old primary's last write(s) (a Sentinel or Cluster promotion).
            del self._cache[bar.symbol]
            return UpsertResult(status, length, version, True, redelivered)
        return result

    def latest(self, symbol: str) -> tuple[np.ndarray, np.ndarray, int]:
        """The cached window's (times, values, oldest offset), copied; for a symbol whose
        last upsert reported `appended` (its copy is then cached)."""
        return self._cache[symbol].latest()

    async def window(self, symbol: str, refresh: bool = False) -> Window:
        """The cached window (no network) or, on first use or refresh=True, Redis's."""
        local = self._cache.get(symbol)
        if local is None or refresh:
            local = await self._fetch(symbol)
        return local.snapshot()

    async def _fetch(self, symbol: str) -> _Local:
        raw_ver, members, records = await self._read(keys=self.keys(symbol))
        version = int(_text(raw_ver))
        n = len(members)
        times = np.fromiter((int(_text(m)) for m in members), dtype=np.int64, count=n)
        values = np.empty((n, 6), dtype=np.float64)
        offsets = np.empty(n, dtype=np.int64)
        for i, rec in enumerate(records):
            values[i], offsets[i] = _parse_record(rec)
        current = self._cache.get(symbol)
        # A slower overlapping call must not replace a newer copy.
        if current is not None and current.version > version:
            return current
        local = _Local(self.lookback, times, values, offsets, version)
        self._cache[symbol] = local
        return local

    def forget(self, symbols) -> None:
        """Drop local copies (partition revoked: another worker now owns them)."""
        for s in symbols:
            self._cache.pop(s, None)
            self._encoded_keys.pop(s, None)

    async def delete(self, symbols) -> None:
        """Remove the symbols' keys from Redis and the local cache."""
        symbols = list(symbols)
        self.generation += 1
        for s in symbols:  # one DEL per symbol: its keys share a slot, different symbols may not
            await self.redis.delete(*self.keys(s))
        self.forget(symbols)

    async def ping(self) -> bool:
        return await redis_connect.ping(self.redis)  # a Cluster: every master

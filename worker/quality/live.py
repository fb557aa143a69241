"""Live forecast quality: stored forecasts, scoring claims, calibration state, metrics.

Every published forecast is kept in Redis under its symbol's hash tag (worker/adapters/keys.py)
until newer forecasts push it out (the newest `keep` per symbol, enough to cover every
horizon step), with its steps and their scoring marks; one older than those is not kept, nor
scored. Each horizon step is indexed by its bar time in a `due` sorted set. A
step is scored exactly once per realized value, decided atomically in Lua:

- when a bar arrives, the claim script (pipelined with the window upsert, so no extra
  round trip) returns the stored forecasts that have a step at that bar time and marks
  them scored with "close;offset";
- when a forecast is stored, the steps whose bars are already in the window (a replay
  runs ahead of inference) are claimed by the store script itself.

A claim is `new`, a `rescore` (a correction changed the close: scored again against the
latest value and flagged as such), or `redelivered` (the very message that claimed it
before, re-read after a crash: the score is published again, at-least-once, but the
calibration is not fed twice). A bar with no stored forecast claims nothing: not an
error. After a Redis flush the stored forecasts are gone and their steps are simply not
scored (counted as missing nowhere, wrong nowhere).

Calibration state (worker/quality/calibration.py) is cached here, loaded from Redis on first use
of a group and written back by `flush()` (the worker's tick), so another worker taking
over a partition continues it. Pools shared by several workers are last-writer-wins:
each copy is a valid window of recent residuals of that pool.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from worker.contracts import events
from worker.adapters import redis_connect
from worker.quality.calibration import DEFAULT_GAMMA, DEFAULT_MIN_SCORES, DEFAULT_WINDOW, Calibrator, residual_scale
from worker.adapters.keys import RedisKeys
from worker.quality.scoring import ForecastRecord, band_name, band_pairs, score_step
from worker.calendars.sessions import calibration_groups
from worker.contracts.events import epoch_seconds

log = logging.getLogger(__name__)

# Decide new / rescore / redelivered for one scoring mark; shared by both scripts.
_MARK_LUA = """
local function mark(scored, member, close, offset)
  local value = close .. ';' .. offset
  local prev = redis.call('HGET', scored, member)
  local kind = nil
  if not prev then kind = 'new'
  elseif prev == value then kind = 'redelivered'
  elseif string.match(prev, '^(.*);') ~= close then kind = 'rescore' end
  if kind then redis.call('HSET', scored, member, value) end
  return kind, prev
end
"""

# KEYS: fc, fcidx, due, scored. ARGV: bar epoch seconds, close, offset.
# Returns {{member, kind, record or nil, previous mark or nil}, ...}.
_CLAIM_LUA = _MARK_LUA + """
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[1], ARGV[1])) do
  local kind, prev = mark(KEYS[4], m, ARGV[2], ARGV[3])
  if kind then
    local rec = redis.call('HGET', KEYS[1], string.match(m, '^(.*)#'))
    table.insert(out, {m, kind, rec or false, prev or false})
  end
end
return out
"""

# KEYS: fc, fcidx, due, scored. ARGV: id, as_of epoch, record, keep, P, P step epochs,
# then (step, close, offset) triples for steps whose bars are already known.
# A forecast pushed out takes all its keys along: its record, its index entry, every step of
# it in due (however many it had: --pred-len may have changed since it was stored) and their
# scoring marks. One older than the newest `keep` (a redelivery or a lagging shadow) is
# pushed out at once: not stored, so its known steps are neither marked nor claimed.
_STORE_LUA = _MARK_LUA + """
local id, P, keep = ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], id, ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], id)
for h = 1, P do redis.call('ZADD', KEYS[3], ARGV[5 + h], id .. '#' .. h) end
local n = redis.call('ZCARD', KEYS[2])
local dropped = false
if n > keep then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, n - keep - 1)) do
    redis.call('HDEL', KEYS[1], old)
    local h = 1
    while redis.call('ZREM', KEYS[3], old .. '#' .. h) == 1 or h <= P do
      redis.call('HDEL', KEYS[4], old .. '#' .. h)
      h = h + 1
    end
    if old == id then dropped = true end
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - keep - 1)
end
local out = {}
if dropped then return out end
local i = 6 + P
while i + 2 <= #ARGV do
  local m = id .. '#' .. ARGV[i]
  local kind, prev = mark(KEYS[4], m, ARGV[i + 1], ARGV[i + 2])
  if kind then table.insert(out, {m, kind, ARGV[3], prev or false}) end
  i = i + 3
end
return out
"""

KINDS = ("new", "rescore", "redelivered")
FORECASTERS = ("model", "persistence", "drift")


def _text(x) -> str:
    return x.decode() if isinstance(x, (bytes, bytearray)) else str(x)


class QualityMetrics:
    """Sums per model name/version and horizon step (never per symbol), so rates of two
    series give skill (1 - MAE model / MAE persistence), hit rate, coverage, mean pinball/CRPS."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        mv = ["model", "version", "step"]
        self.scores = Counter("kronos_rt_scores", "Forecast steps scored against the realized close, "
                              "by kind (new, rescore after a correction, redelivered).", mv + ["kind"], registry=r)
        self.abs_error = Counter("kronos_rt_score_abs_error", "Sum of |close error| of new scores, for the model "
                                 "and the persistence and drift baselines.", mv + ["forecaster"], registry=r)
        self.sq_error = Counter("kronos_rt_score_sq_error", "Sum of squared close errors of new scores.",
                                mv + ["forecaster"], registry=r)
        self.direction = Counter("kronos_rt_score_direction", "Direction calls on moves (sign of forecast vs "
                                 "realized move from the as_of close), by result.", mv + ["result"], registry=r)
        self.band = Counter("kronos_rt_score_band", "Closes scored against a band, by band kind (raw, calibrated) "
                            "and nominal coverage.", mv + ["kind", "band"], registry=r)
        self.band_hits = Counter("kronos_rt_score_band_hits", "Closes that fell inside the band.",
                                 mv + ["kind", "band"], registry=r)
        self.pinball = Counter("kronos_rt_score_pinball", "Sum of pinball losses, by band kind and level.",
                               mv + ["kind", "level"], registry=r)
        self.crps = Counter("kronos_rt_score_crps", "Sum of close CRPS from sample paths.", mv, registry=r)
        self.crps_count = Counter("kronos_rt_score_crps_scored", "Scores with a CRPS.", mv, registry=r)


@dataclass
class Claim:
    member: str
    step: int
    kind: str                      # new | rescore | redelivered
    record: ForecastRecord | None  # None: the stored forecast is gone (counted, not scored)
    previous_close: float | None   # what the step was scored with before (rescore)
    realized: float


class Quality:
    def __init__(self, redis, keys: RedisKeys, *, pred_len: int, levels, metrics: QualityMetrics,
                 window: int = DEFAULT_WINDOW, gamma: float = DEFAULT_GAMMA, min_scores: int = DEFAULT_MIN_SCORES,
                 groups: str = "*=all", per_symbol: int = 0, models: int = 1, worker_id: str = ""):
        self.redis = redis
        self.keys = keys
        self.pred_len = pred_len
        self.levels = sorted(float(q) for q in levels)
        self.metrics = metrics
        self.window, self.gamma, self.min_scores = window, gamma, min_scores
        self.group_of = calibration_groups(groups)  # symbol -> pool name
        self.per_symbol = per_symbol  # a symbol's own calibration once it has this many scores (0 = pools only)
        self.keep = (2 * pred_len + 16) * max(1, models)
        self.worker_id = worker_id
        self._claim = redis_connect.register_script(redis, _CLAIM_LUA)
        self._store = redis_connect.register_script(redis, _STORE_LUA)
        self._cals: dict[tuple[str, bool], Calibrator] = {}

    # ------------------------------------------------------------- calibration state
    def _key(self, name: str, per_symbol: bool) -> str:
        return self.keys.calibration(name, per_symbol)

    async def load(self, symbols) -> None:
        """Bring the calibration states these symbols use into the cache (one round trip
        for the missing ones, none once cached)."""
        want = []
        for s in set(symbols):
            want.append((self.group_of(s), False))
            if self.per_symbol:
                want.append((s, True))
        missing = [w for w in dict.fromkeys(want) if w not in self._cals]
        if not missing:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, per_symbol in missing:
            pipe.hgetall(self._key(name, per_symbol))
        for (name, per_symbol), state in zip(missing, await pipe.execute()):
            cal = Calibrator(self.pred_len, self.levels, self.window, self.gamma)
            for field, raw in (state or {}).items():
                h = int(_text(field)) - 1
                if 0 <= h < self.pred_len:
                    cal.load_step(h, bytes(raw))
            cal.dirty.clear()
            self._cals[(name, per_symbol)] = cal

    def calibrator(self, symbol: str) -> tuple[str, Calibrator | None]:
        """The calibration a symbol's forecast uses: its own once it has per_symbol scores
        at every step, else its pool. ('symbol:NAME' or 'pool:NAME', state or None)."""
        own = self._cals.get((symbol, True)) if self.per_symbol else None
        if own is not None and own.scores() >= self.per_symbol:
            return f"symbol:{symbol}", own
        group = self.group_of(symbol)
        return f"pool:{group}", self._cals.get((group, False))

    async def flush(self) -> None:
        """Write the changed steps of every cached calibration state to Redis (one pipeline)."""
        pipe, n = self.redis.pipeline(transaction=False), 0
        for (name, per_symbol), cal in self._cals.items():
            if cal.dirty:
                pipe.hset(self._key(name, per_symbol),
                          mapping={str(h + 1): cal.step_state(h) for h in sorted(cal.dirty)})
                cal.dirty.clear()
                n += 1
        if n:
            await pipe.execute()

    # ------------------------------------------------------------- forecasts
    def record(self, symbol: str, as_of: str, horizon, values: np.ndarray, fc, ref) -> ForecastRecord:
        """The stored form of one forecast, with its calibrated close quantiles (call load() first)."""
        closes = np.asarray(values, dtype=np.float64)[:, 3]
        last = float(closes[-1])
        k = min(len(closes) - 1, 20)
        drift = float((closes[-1] - closes[-1 - k]) / k) if k > 0 else 0.0
        scale = residual_scale(closes)
        mean = np.asarray(fc.mean, dtype=np.float64)[:, 3]
        raw = None
        if fc.quantiles and all(q in fc.quantiles for q in self.levels):
            raw = np.stack([np.asarray(fc.quantiles[q], dtype=np.float64)[:, 3] for q in self.levels], axis=1)
        group, cal = self.calibrator(symbol)
        cal_q = cal.bands(raw if raw is not None else mean, scale, self.min_scores) if cal is not None else None
        paths = getattr(fc, "paths", None)
        return ForecastRecord(
            symbol=symbol, as_of=as_of, model_name=ref.name, model_version=ref.version, last_close=last,
            drift=drift, scale=scale if math.isfinite(scale) else 0.0,
            horizon_ts=[events.format_ts(t) for t in horizon], mean_close=mean.tolist(), levels=list(self.levels),
            raw_q=None if raw is None else raw.tolist(),
            cal_q=None if cal_q is None else cal_q.tolist(),
            cal_n=cal.scores() if cal is not None else 0, cal_group=group,
            paths=None if paths is None or len(paths) < 2 else np.asarray(paths)[:, :, 3].T.tolist(),
        )

    @staticmethod
    def forecast_id(rec: ForecastRecord) -> str:
        return f"{rec.model_name}@{rec.model_version}|{rec.as_of}"

    async def store(self, items) -> list[list[Claim]]:
        """Store forecasts, one pipeline: items are (record, horizon datetimes, window) with
        window having .times and .values (and .offsets, for the steps already realized).
        Returns, per item, the claims of steps whose bars were already there."""
        if not items:
            return []
        pipe = self.redis.pipeline(transaction=False)
        closes: list[dict[int, float]] = []
        for rec, horizon, window in items:
            epochs = [epoch_seconds(t) for t in horizon]
            realized, known = [], {}
            closes.append(known)
            if window is not None and len(window.times):
                wt = window.times.astype("datetime64[s]").astype(np.int64)
                for h, e in enumerate(epochs):
                    i = int(np.searchsorted(wt, e))
                    if i < len(wt) and wt[i] == e:
                        known[h + 1] = float(window.values[i, 3])
                        realized += [h + 1, repr(known[h + 1]), int(window.offsets[i])]
            args = [self.forecast_id(rec), epoch_seconds(events.parse_time(rec.as_of)), events.dumps(rec.to_dict()),
                    self.keep, len(epochs), *epochs, *realized]
            await self._store(keys=self.keys.forecasts(rec.symbol), args=args, client=pipe)
        out = []
        for reply, known in zip(await redis_connect.execute(self.redis, pipe), closes):
            claims = self._claims(reply)
            for c in claims:
                c.realized = known.get(c.step, math.nan)
            out.append(claims)
        return out

    async def claim_into(self, pipe, symbol: str, t: _dt.datetime, close: float, offset: int) -> None:
        """Queue the claim of a bar's steps on a pipeline (the window upsert's)."""
        await self._claim(keys=self.keys.forecasts(symbol), args=[epoch_seconds(t), repr(float(close)), int(offset)],
                          client=pipe)

    def _claims(self, reply) -> list[Claim]:
        out = []
        for member, kind, raw, prev in reply or ():
            member, kind = _text(member), _text(kind)
            rec = None
            if raw is not None:
                try:
                    rec = ForecastRecord.from_dict(events.loads(raw))
                except Exception:  # a record we cannot read is a missing one, not a crash
                    log.warning("unreadable stored forecast %s", member)
            prev_close = float(_text(prev).rpartition(";")[0]) if prev is not None and kind == "rescore" else None
            out.append(Claim(member, int(member.rpartition("#")[2]), kind, rec, prev_close, math.nan))
        return out

    def claims(self, reply, realized: float) -> list[Claim]:
        """Claims of the claim script's reply, for a bar whose close is `realized`."""
        out = self._claims(reply)
        for c in out:
            c.realized = float(realized)
        return out

    # ------------------------------------------------------------- scoring
    def score(self, claims: list[Claim]) -> list[dict]:
        """score.v1 documents of claims (new ones also feed the calibration and the metrics)."""
        docs = []
        for c in claims:
            rec = c.record
            if rec is None or not 1 <= c.step <= len(rec.mean_close):
                continue  # the stored forecast is gone (or unreadable): that step goes unscored
            y = c.realized
            fig = score_step(rec, c.step, y)
            self._observe(rec, c, fig)
            if c.kind == "new":
                self._calibrate(rec, c.step, y)
            docs.append(self._doc(rec, c, fig))
        return docs

    def _calibrate(self, rec: ForecastRecord, step: int, y: float) -> None:
        h = step - 1
        if rec.shadow or not (math.isfinite(y) and rec.scale > 0 and rec.levels == self.levels):
            return  # the calibration is the primary's: a shadow's residuals would move its bands
        base = np.asarray(rec.raw_q[h] if rec.raw_q is not None else [rec.mean_close[h]] * len(self.levels))
        r = (y - base) / rec.scale
        served = None if rec.cal_q is None else np.asarray(rec.cal_q[h], dtype=np.float64)
        below = None if served is None or not np.all(np.isfinite(served)) else (y <= served)
        group = self.group_of(rec.symbol)
        targets = [((group, False), rec.cal_group == f"pool:{group}")]
        if self.per_symbol:
            targets.append(((rec.symbol, True), rec.cal_group == f"symbol:{rec.symbol}"))
        for key, was_served in targets:
            cal = self._cals.get(key)
            if cal is None:  # not loaded on this worker (e.g. a flush in between): load() creates it
                cal = self._cals[key] = Calibrator(self.pred_len, self.levels, self.window, self.gamma)
            cal.update(step, r, below if was_served else None)

    def _observe(self, rec: ForecastRecord, c: Claim, fig: dict) -> None:
        m = self.metrics
        lab = (rec.model_name, rec.model_version, str(c.step))
        m.scores.labels(*lab, c.kind).inc()
        if c.kind != "new":  # sums count each step once (the first realized value)
            return
        for name, key in (("model", ""), ("persistence", "persistence_"), ("drift", "drift_")):
            if fig[f"{key}abs_error"] is not None:
                m.abs_error.labels(*lab, name).inc(fig[f"{key}abs_error"])
                m.sq_error.labels(*lab, name).inc(fig[f"{key}sq_error"])
        if fig["direction_hit"] is not None:
            m.direction.labels(*lab, "hit" if fig["direction_hit"] else "miss").inc()
        for kind in ("raw", "calibrated"):
            part = fig.get(kind)
            if not part:
                continue
            for band, hit in part["bands"].items():
                m.band.labels(*lab, kind, band).inc()
                if hit:
                    m.band_hits.labels(*lab, kind, band).inc()
            for level, loss in zip(rec.levels, part["pinball"]):
                m.pinball.labels(*lab, kind, f"{level:g}").inc(loss)
        if "crps" in fig:
            m.crps.labels(*lab[:3]).inc(fig["crps"])
            m.crps_count.labels(*lab[:3]).inc()

    def _doc(self, rec: ForecastRecord, c: Claim, fig: dict) -> dict:
        doc = {
            "schema": "score.v1", "symbol": rec.symbol, "as_of": rec.as_of, "ts": rec.horizon_ts[c.step - 1],
            "step": c.step, "model": {"name": rec.model_name, "version": rec.model_version},
            "kind": c.kind, "previous_close": c.previous_close, "last_close": rec.last_close,
            "quantile_levels": rec.levels,
            "calibration": {"source": rec.cal_group, "scores": rec.cal_n},
            "worker_id": self.worker_id,
            "produced_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        }
        if rec.shadow:
            doc["shadow"] = True
        doc.update(fig)
        doc.pop("step", None)
        doc["step"] = c.step
        return doc


def calibrated_entries(rec: ForecastRecord) -> list[dict | None]:
    """Per horizon step: {"close": [one value per level]} when that step is calibrated."""
    if rec.cal_q is None:
        return [None] * len(rec.mean_close)
    return [{"close": row} if all(math.isfinite(v) for v in row) else None for row in rec.cal_q]


__all__ = ["Quality", "QualityMetrics", "Claim", "calibrated_entries", "band_name", "band_pairs", "KINDS"]


class LiveScoring:
    """The worker's side of quality: calibrate and store forecasts around their publishing,
    publish the scores a bar or a stored forecast caused. Scores go through
    Publisher.send, so their acks gate commits like forecasts do."""

    def __init__(self, quality: Quality, store, publisher_of, scores_topic: str):
        self.quality = quality
        self.store = store                  # WindowStore: the windows a stored forecast is checked against
        self.publisher_of = publisher_of    # () -> Publisher (made after the worker's producer starts)
        self.topic = scores_topic           # "" = scores kept for metrics and calibration only
        self.published = 0

    async def publish(self, state, offset: int, docs: list[dict]) -> None:
        if not self.topic:
            return
        pub = self.publisher_of()
        for doc in docs:
            if state is not None:  # None: gates no commit (a shadow's scores)
                state.offsets.add(offset)
            await pub.send(self.topic, doc["symbol"].encode(), events.dumps(doc), None, state, offset)
            self.published += 1

    async def before(self, batch) -> None:
        """Calibrated bands for each forecast of a batch (Ready.quality, read by ForecastDoc)."""
        items = [(it, res) for it, res in zip(batch.items, batch.results or ()) if res is not None]
        try:
            await self.quality.load(it.bar.symbol for it, _ in items)
        except Exception:  # the forecasts go out anyway, uncalibrated if need be
            log.warning("loading calibration state failed; forecasts go out with what is cached", exc_info=True)
        for it, (fc, ref) in items:
            it.quality = self.quality.record(it.bar.symbol, it.bar.ts, it.horizon, it.values, fc, ref)
            # Held until the forecast is stored: a commit must not pass a bar whose store-path
            # scores are not sent yet.
            it.partition.offsets.add(it.offset)

    async def after(self, batch) -> None:
        """Store the batch's forecasts (one pipeline) and publish the scores of steps whose bars
        were already there (a replay runs ahead of inference)."""
        items = [it for it in batch.items if getattr(it, "quality", None) is not None]
        try:
            todo = [(it.quality, it.horizon, await self.store.window(it.bar.symbol)) for it in items]
            claims = await self.quality.store(todo)
            for it, cs in zip(items, claims):
                await self.publish(it.partition, it.offset, self.quality.score(cs))
        except Exception:  # scoring never stops the forecast path; these steps go unscored
            log.warning("storing %d forecasts for scoring failed", len(items), exc_info=True)
        finally:
            for it in items:
                it.partition.offsets.done(it.offset)


def make_live_scoring(settings, redis, keys: RedisKeys, store, metrics, publisher_of, models: int = 1):
    """LiveScoring from the worker's settings, or None when scoring and calibration are off."""
    s = settings
    if not s.scores_topic and s.calibration_window <= 0:
        return None
    quality = Quality(redis, keys, pred_len=s.pred_len, levels=s.quantiles, metrics=metrics.quality,
                      window=max(2, s.calibration_window or DEFAULT_WINDOW), gamma=s.calibration_gamma,
                      min_scores=s.calibration_min_scores if s.calibration_window > 0 else 1 << 30,
                      groups=s.calibration_groups, per_symbol=s.calibration_per_symbol, models=models,
                      worker_id=s.worker_id)
    return LiveScoring(quality, store, publisher_of, s.scores_topic)

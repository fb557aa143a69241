"""Ad-hoc forecasts on the shared engine: request -> engine items -> micro-batcher's
lower-priority lane -> forecast.v1 documents.

Checks here need the server's settings (limits, interval, calendars) or look across bars
(order, high/low); each failure is an ApiError naming the field, e.g. `bars[3].high`.
Items carry their own pred_len, sampling and quantiles; Inference.compute groups by them
and by window length, so an answer never depends on what else shared its batch.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from kronos_rt.features import COLUMNS, PRICE_COLUMNS
from worker.contracts import events
from worker.pipeline.batcher import MicroBatcher, QueueFull
from worker.config import Settings, parse_interval
from worker.http.schema import FastRequest, Series, series_of_model
from worker.calendars.sessions import parse_session_map

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 200: status, machine-readable code, the field at fault, a message."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after = retry_after

    def body(self) -> dict:
        err = {"status": self.status, "code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}


@dataclass
class Job:
    """One series for Inference.compute (values/times/horizon as the stream's Ready items)."""
    symbol: str
    values: np.ndarray          # [L, 6], NaN = missing volume/amount
    times: np.ndarray           # datetime64[s] [L]
    horizon: list[_dt.datetime]
    pred_len: int
    sampling: object            # kronos_rt.SamplingParams
    quantiles: tuple[float, ...]
    as_of: str
    interval_s: int
    received: float = field(default_factory=time.time)


def _bad(where: str, message: str) -> ApiError:
    return ApiError(422, "invalid", message, where)


# Character codes of the common ts form, YYYY-MM-DDTHH:MM:SS, position by position.
_DIGIT_AT = np.array([i not in (4, 7, 10, 13, 16) for i in range(19)])
_SEPARATORS = {4: ord("-"), 7: ord("-"), 10: ord("T"), 13: ord(":"), 16: ord(":")}
_YEAR_1 = np.datetime64("0001-01-01T00:00:00")


def _common_times(ts: list) -> np.ndarray | None:
    """datetime64[s] of ts all in the form YYYY-MM-DDTHH:MM:SS (what parse_time makes of
    them), checked column-wise; None when any is in another form or not a valid time."""
    a = np.array(ts)
    if a.dtype.kind != "U" or a.dtype.itemsize != 19 * 4:
        return None
    codes = a.view(np.uint32).reshape(len(ts), 19)
    digits = codes[:, _DIGIT_AT]
    if not ((digits >= ord("0")) & (digits <= ord("9"))).all():
        return None  # also catches shorter strings (numpy pads them with NUL)
    if any((codes[:, i] != c).any() for i, c in _SEPARATORS.items()):
        return None
    try:
        times = a.astype("datetime64[s]")  # refuses day 31 of a 30-day month, hour 24, ...
    except ValueError:
        return None
    return times if (times >= _YEAR_1).all() else None


def _check_bars(series: Series, p: str) -> np.ndarray:
    """Bar by bar, in order: ApiError for the first fault, naming it; else the times."""
    times = []
    for i, (ts, row) in enumerate(zip(series.ts, series.values.tolist())):
        o, h, lo, c = row[:4]
        try:
            t = events.parse_time(ts)
        except events.InvalidEvent as exc:
            raise _bad(f"{p}bars[{i}].ts", exc.detail) from None
        # The stream's value policy (events.parse_bar): such a bar would poison the window.
        for name, v in zip(COLUMNS, row):
            if name in PRICE_COLUMNS and v <= 0:
                raise _bad(f"{p}bars[{i}].{name}", f"prices must be > 0, got {v}")
            if abs(v) > events.MAX_MAGNITUDE:  # NaN (missing volume/amount) compares False
                raise _bad(f"{p}bars[{i}].{name}", f"{v:g}: |values| above {events.MAX_MAGNITUDE:g} "
                                                   "cannot be normalized in float32")
        if times and t <= times[-1]:
            raise _bad(f"{p}bars[{i}].ts", f"{ts} {'duplicates' if t == times[-1] else 'is before'} "
                                           f"bars[{i - 1}].ts: bars must be in strictly increasing time order")
        if h < lo:
            raise _bad(f"{p}bars[{i}].high", f"high {h} < low {lo}")
        if h < max(o, c):
            raise _bad(f"{p}bars[{i}].high", f"high {h} below open/close")
        if lo > min(o, c):
            raise _bad(f"{p}bars[{i}].low", f"low {lo} above open/close")
        times.append(t)
    return np.array(times, dtype="datetime64[s]")


class ForecastService:
    def __init__(self, settings: Settings, inference, batcher: MicroBatcher, metrics, worker_id: str | None = None):
        self.s = settings
        self.inference = inference
        self.batcher = batcher
        self.metrics = metrics
        self.worker_id = worker_id or settings.worker_id
        self.calendar_for = parse_session_map(settings.sessions, settings.calendar_range)
        self.interval = settings.interval_td
        self.closed = False
        batcher.on_low_batch = lambda batch: metrics.batch_size.observe(len(batch.items))
        metrics.queue_depth.set_function(lambda: batcher.low_pending)

    def arriving(self):
        """Context around receiving and parsing a request (see MicroBatcher.arriving)."""
        return self.batcher.arriving()

    # -- checks ---------------------------------------------------------------------------
    def prepare(self, req, where: str = "", received: float | None = None) -> Job:
        """A validated request (model or schema.FastRequest) -> Job, or ApiError naming the
        field (prefix `where`). Bars are checked column-wise; bar by bar only to name a fault.
        `received`: when the request arrived (time.time()), for latency_ms.total."""
        from kronos_rt import SamplingParams

        s, p = self.s, where
        series = req.series if isinstance(req, FastRequest) else series_of_model(req)
        if not 1 <= len(series.ts) <= s.http_max_bars:
            raise _bad(f"{p}bars", f"need 1 to {s.http_max_bars} bars, got {len(series.ts)}")
        v = series.values
        times = _common_times(series.ts)
        if (times is None or not (times[1:] > times[:-1]).all() or not (v[:, :4] > 0).all()
                or (np.abs(v) > events.MAX_MAGNITUDE).any() or not (v[:, 1] >= v[:, 2]).all()
                or not (v[:, 1] >= np.maximum(v[:, 0], v[:, 3])).all()
                or not (v[:, 2] <= np.minimum(v[:, 0], v[:, 3])).all()):
            times = _check_bars(series, p)  # bar by bar: the first fault, named; or other valid ts forms
        last = times[-1].astype(object)
        interval = self.interval
        if req.interval is not None:
            try:
                interval = parse_interval(req.interval)
            except ValueError as exc:
                raise _bad(f"{p}interval", str(exc)) from None
        pred_len = req.pred_len
        if pred_len is None:
            pred_len = len(req.future_ts) if req.future_ts else s.pred_len
        if not 1 <= pred_len <= s.http_max_pred_len:
            raise _bad(f"{p}pred_len", f"pred_len must be 1 to {s.http_max_pred_len}, got {pred_len}")
        if req.future_ts is not None:
            horizon = []
            for i, ts in enumerate(req.future_ts):
                try:
                    t = events.parse_time(ts)
                except events.InvalidEvent as exc:
                    raise _bad(f"{p}future_ts[{i}]", exc.detail) from None
                prev = horizon[-1] if horizon else last
                if t <= prev:
                    raise _bad(f"{p}future_ts[{i}]", f"{ts} is not after "
                                                     f"{'future_ts[%d]' % (i - 1) if horizon else 'the last bar'}")
                horizon.append(t)
            if len(horizon) != pred_len:
                raise _bad(f"{p}future_ts", f"{len(horizon)} timestamps for pred_len {pred_len}")
        else:
            try:
                horizon = self.calendar_for(req.symbol).next_times(last, interval, pred_len)
            except (ValueError, RuntimeError) as exc:
                raise _bad(f"{p}interval", str(exc)) from None
        sp = req.sampling
        base = self.inference.sampling
        try:
            sampling = SamplingParams(
                temperature=base.temperature if sp is None or sp.temperature is None else sp.temperature,
                top_k=base.top_k if sp is None or sp.top_k is None else sp.top_k,
                top_p=base.top_p if sp is None or sp.top_p is None else sp.top_p,
                sample_count=base.sample_count if sp is None or sp.sample_count is None else sp.sample_count,
                seed=base.seed)
        except ValueError as exc:
            raise _bad(f"{p}sampling", str(exc)) from None
        quantiles = tuple(sorted(set(req.quantiles))) if req.quantiles is not None else tuple(self.s.quantiles)
        return Job(symbol=req.symbol, values=v, times=times, horizon=horizon, pred_len=pred_len,
                   sampling=sampling, quantiles=quantiles, as_of=events.format_ts(last),
                   interval_s=int(interval.total_seconds()), received=received or time.time())

    # -- running --------------------------------------------------------------------------
    async def run(self, jobs: list[Job], disconnected=None) -> list[dict] | None:
        """Forecast `jobs` (all or none admitted); None when the client went away first.
        `disconnected`: returns an awaitable that completes when the client disconnects."""
        retry = max(1.0, self.s.max_wait_ms / 1000)
        if self.closed:
            self.metrics.rejected.labels(reason="closed").inc(len(jobs))
            raise ApiError(503, "unavailable", "server is shutting down", retry_after=5)
        if len(jobs) > self.batcher.low_max_queue:  # would never fit: not a matter of waiting
            raise ApiError(422, "invalid", f"{len(jobs)} series exceed the request queue "
                                           f"({self.batcher.low_max_queue}); split the batch", "series")
        if self.batcher.low_queued + len(jobs) > self.batcher.low_max_queue:
            self.metrics.rejected.labels(reason="queue_full").inc(len(jobs))
            raise ApiError(429, "overloaded", f"request queue full ({self.batcher.low_max_queue} series); "
                                              "retry later", retry_after=retry)
        try:
            futs = [self.batcher.submit_low(j) for j in jobs]
        except QueueFull:  # unreachable after the check above on one loop, kept for safety
            self.metrics.rejected.labels(reason="queue_full").inc(len(jobs))
            raise ApiError(429, "overloaded", "request queue full; retry later", retry_after=retry) from None
        except RuntimeError:
            raise ApiError(503, "unavailable", "server is shutting down", retry_after=5) from None
        watch = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        gather = asyncio.gather(*futs)
        gather.add_done_callback(lambda g: g.cancelled() or g.exception())  # retrieved, even when abandoned
        try:
            waits = {gather} | ({watch} if watch is not None else set())
            done, _ = await asyncio.wait(waits, timeout=self.s.http_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if gather not in done:
                for f in futs:
                    f.cancel()  # frees the queue slots at once; the batcher skips them
                if watch is not None and watch in done:
                    self.metrics.rejected.labels(reason="client_gone").inc(len(jobs))
                    return None
                self.metrics.rejected.labels(reason="timeout").inc(len(jobs))
                raise ApiError(503, "timeout", f"no engine slot within {self.s.http_timeout_s} s "
                                               "(the stream has priority); retry later", retry_after=retry)
            try:
                results = gather.result()
            except RuntimeError as exc:
                if "closed" in str(exc):
                    raise ApiError(503, "unavailable", "server is shutting down", retry_after=5) from None
                raise ApiError(500, "inference_error", f"inference failed: {exc!r:.300}") from None
            except Exception as exc:
                log.warning("inference failed for an HTTP request: %r", exc)
                raise ApiError(500, "inference_error", f"inference failed: {exc!r:.300}") from None
            docs = [self.document(j, fc, ref, batch) for j, ((fc, ref), batch) in zip(jobs, results)]
            self.batcher.low_answered()
            return docs
        finally:
            if watch is not None:
                watch.cancel()
            if not gather.done():
                gather.cancel()

    def document(self, job: Job, fc, ref, batch) -> dict:
        now = time.time()
        doc = events.build_forecast(
            symbol=job.symbol, as_of=job.as_of, interval_s=job.interval_s, horizon_times=job.horizon,
            mean=fc.mean, quantiles=fc.quantiles, model_name=ref.name, model_version=ref.version,
            sampling={"temperature": job.sampling.temperature, "top_k": job.sampling.top_k,
                      "top_p": job.sampling.top_p, "sample_count": job.sampling.sample_count,
                      "lookback": len(job.values), "pred_len": job.pred_len},
            latency_ms={"broker_to_received": 0.0, "queue_wait": max(0.0, batch.started - job.received) * 1000,
                        "inference": (batch.finished - batch.started) * 1000, "total": (now - job.received) * 1000},
            topic="http", partition=0, offset=0, worker_id=self.worker_id)
        doc["batch_size"] = len(batch.items)
        if getattr(ref, "random_weights", False):
            doc["random_weights"] = True  # say so, as the stream's forecasts do
        return doc

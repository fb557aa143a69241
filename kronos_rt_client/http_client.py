"""HttpForecastClient: ad-hoc forecasts from a `kronos-rt serve` (or a worker's --http-port),
the HTTP counterpart of kronos_rt_client.ForecastClient; answers are the same ForecastView.

    async with HttpForecastClient("http://127.0.0.1:8000", token=...) as client:
        fc = await client.forecast(bars, pred_len=12, symbol="600000.SH")
        print(fc.horizon[0].close)

`bars`: a list of dicts (ts, open, high, low, close[, volume, amount]) or a DataFrame with
those columns (the time in `ts`, `timestamps` or the index).
"""
from __future__ import annotations

import asyncio
import datetime as _dt

import httpx
import orjson

from kronos_rt_client.client import ForecastView, parse_forecast
from kronos_rt_client.wire import COLUMNS


class HttpForecastError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field, self.retry_after = status, code, message, field, retry_after


def _ts(t) -> str:
    if isinstance(t, str):
        return t
    if hasattr(t, "to_pydatetime"):
        t = t.to_pydatetime()
    if isinstance(t, _dt.datetime):
        return t.strftime("%Y-%m-%dT%H:%M:%S")
    return str(t)


def bars_payload(bars) -> list[dict]:
    """List of bar dicts (ts as ISO strings) from dicts or a pandas DataFrame."""
    if hasattr(bars, "to_dict") and hasattr(bars, "columns"):
        df = bars
        times = df["ts"] if "ts" in df.columns else df["timestamps"] if "timestamps" in df.columns else df.index
        cols = [c for c in COLUMNS if c in df.columns]
        rows = df[cols].to_numpy(dtype=float).tolist()
        return [{"ts": _ts(t), **dict(zip(cols, r))} for t, r in zip(list(times), rows)]
    return [{**b, "ts": _ts(b["ts"])} for b in bars]


class HttpForecastClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60.0, retries: int = 3,
                 client: httpx.AsyncClient | None = None):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._own = client is None
        self._http = client or httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)
        self.retries = retries

    async def __aenter__(self) -> "HttpForecastClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    @staticmethod
    def request(bars, *, pred_len: int | None = None, symbol: str = "adhoc", future_ts=None,
                interval: str | None = None, sampling: dict | None = None, quantiles=None) -> dict:
        body = {"symbol": symbol, "bars": bars_payload(bars)}
        for k, v in (("pred_len", pred_len), ("interval", interval), ("sampling", sampling)):
            if v is not None:
                body[k] = v
        if future_ts is not None:
            body["future_ts"] = [_ts(t) for t in future_ts]
        if quantiles is not None:
            body["quantiles"] = list(quantiles)
        return body

    async def forecast(self, bars, **kw) -> ForecastView:
        doc = await self._post("/v1/forecast", self.request(bars, **kw))
        return parse_forecast(orjson.dumps(doc), topic="http")

    async def forecast_many(self, series: list[dict]) -> list[ForecastView]:
        """series: keyword dicts of forecast() (each with "bars")."""
        body = {"series": [self.request(s.pop("bars"), **s) for s in (dict(x) for x in series)]}
        doc = await self._post("/v1/forecast:batch", body)
        return [parse_forecast(orjson.dumps(d), topic="http") for d in doc["forecasts"]]

    async def models(self) -> dict:
        r = await self._http.get("/v1/models")
        return self._check(r)

    async def _post(self, path: str, body: dict) -> dict:
        content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        for attempt in range(self.retries + 1):
            r = await self._http.post(path, content=content, headers={"content-type": "application/json"})
            try:
                return self._check(r)
            except HttpForecastError as err:
                # Overload is temporary: wait as long as the server asks, then try again.
                if err.status not in (429, 503) or attempt == self.retries:
                    raise
                await asyncio.sleep(err.retry_after or 0.5 * 2 ** attempt)

    @staticmethod
    def _check(r: httpx.Response) -> dict:
        if r.status_code == 200:
            return r.json()
        try:
            e = r.json()["error"]
        except Exception:
            e = {"code": "http", "message": r.text[:300]}
        ra = r.headers.get("retry-after")
        raise HttpForecastError(r.status_code, e.get("code", "http"), e.get("message", ""), e.get("field"),
                                float(ra) if ra and ra.replace(".", "", 1).isdigit() else None)

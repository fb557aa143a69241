"""Reading forecast.v1 messages: the few wire rules a subscriber shares with the service.

Time stamps are ISO 8601 strings read as naive exchange-local wall-clock times (an offset is
dropped, not converted); two messages are copies of one forecast when forecast_identity
says so. The service's bar.v1 parser (worker/contracts/events.py) uses the same rules.
Imports only the standard library.
"""
from __future__ import annotations

import datetime as _dt
import re

# The bar and forecast columns, in the model's order (kronos_rt.features.COLUMNS: a test
# keeps the two equal without this package importing the model library).
COLUMNS = ("open", "high", "low", "close", "volume", "amount")

# Same pattern as schemas/*.json (fullmatch here, so no anchors).
TS_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?"
)


class InvalidEvent(Exception):
    """A message that cannot become a Bar. `reason` is a short snake_case code
    (metric label and DLQ header); `detail` is for humans."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_ts(ts: str) -> _dt.datetime:
    """ISO 8601 string -> datetime as written (aware when it carries an offset)."""
    if type(ts) is not str or not TS_RE.fullmatch(ts):
        raise InvalidEvent("bad_ts", f"ts must be an ISO 8601 date-time string, got {ts!r}")
    try:
        return _dt.datetime.fromisoformat(ts)
    except ValueError as e:
        raise InvalidEvent("bad_ts", f"{ts!r}: {e}") from None


def parse_time(ts: str) -> _dt.datetime:
    """ISO 8601 string -> naive wall-clock datetime (offset dropped, not converted)."""
    t = parse_ts(ts)
    return t.replace(tzinfo=None) if t.tzinfo is not None else t


def forecast_identity(symbol: str, as_of: _dt.datetime, model_name, model_version) -> tuple:
    """What makes two forecast.v1 messages copies of one forecast (a redelivery after a
    failover): symbol, as_of (parsed, so equal times written differently match), model name
    and version. The subscriber client, the report and the demo all deduplicate by it."""
    return (symbol, as_of, str(model_name), str(model_version))


def identity_of(doc: dict) -> tuple:
    """forecast_identity of a forecast.v1 dict."""
    model = doc.get("model") or {}
    return forecast_identity(doc["symbol"], parse_time(doc["as_of"]), model.get("name"), model.get("version"))



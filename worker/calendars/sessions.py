"""Trading-session calendars: the timestamps of the bars that come after a given bar.

Bars are labelled by their END time (a 5-minute bar stamped 09:35 covers 09:30-09:35), so a
session part (open, close] holds bars at open+interval, ..., close. All times are naive
wall-clock times in the exchange's own zone, the same convention as Bar.time.

Calendars (`--sessions`, per symbol glob):
- `continuous`: trading never stops (crypto), a bar every interval.
- any exchange code `exchange_calendars` knows (XSHG, XSHE, XHKG, XNYS, XNAS, XLON, XTKS,
  CMES, ... and its aliases such as NYSE; `kronos-rt calendars` lists them), with its
  holidays, early closes, late opens and lunch breaks. `ashare` and `us` are aliases of
  XSHG and XNYS, XSHE (Shenzhen, same calendar) of XSHG. Each is built once per process (its constructor is slow) into a
  SessionTable (worker/calendars/session_table.py); the next N bar times are then a bisect and some
  integer arithmetic.
- Past the table's range (`--calendar-range` widens it, within what the library records)
  the calendar falls back to its weekday rule (its regular session times on its weekdays,
  holidays unknown), logs a warning and counts it (`fallbacks`, exported as
  kronos_rt_calendar_fallbacks_total).

A bar stamped inside a closed period of its calendar (a holiday, a lunch break, after the
close) is accepted: `closed_reason` says which period, ingest counts it
(kronos_rt_bars_closed_period_total) and its forecast's horizon starts at the next open part.
docs/CALENDARS.md says why.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

from worker.calendars.session_table import DAY_S, SessionTable, from_seconds
from worker.contracts.events import epoch_seconds

T = TypeVar("T")
log = logging.getLogger(__name__)

WEEKDAYS = frozenset(range(5))  # Monday=0 .. Friday=4
ALL_DAYS = frozenset(range(7))

# Our own names for library codes: the names earlier versions of --sessions had, and
# Shenzhen, which keeps Shanghai's calendar (the library has XSHG only).
ALIASES = {"ashare": "XSHG", "us": "XNYS", "XSHE": "XSHG", "SZSE": "XSHG"}
HOW_TO_LIST = "`kronos-rt calendars` lists the valid codes"


class _RemembersLast:
    """next_times answers the same call again from memory: every symbol of a burst asks
    about one bar time. The calendar computes in `_next_times`; a fallback to the weekday rule
    is counted on every call that would make it."""
    fallbacks = 0
    _last_times: tuple = (None, ((), False))

    def next_times(self, last: _dt.datetime, interval: _dt.timedelta, n: int) -> list[_dt.datetime]:
        """The n bar times after `last` (which need not itself be in a session)."""
        key = (last, interval, n)
        held, (out, fell_back) = self._last_times
        if held == key:
            if fell_back:
                self._fell_back(last)
            return list(out)
        before = self.fallbacks
        out = self._next_times(last, interval, n)
        if last.tzinfo is None:  # aware times of one instant in two zones are equal, but not here
            self._last_times = (key, (tuple(out), self.fallbacks != before))
        return out

    def _next_times(self, last: _dt.datetime, interval: _dt.timedelta, n: int) -> list[_dt.datetime]:
        raise NotImplementedError

    def _fell_back(self, last: _dt.datetime) -> None:
        pass


class SessionCalendar(_RemembersLast):
    """The weekday rule: trading days plus fixed intraday sessions, no holidays. No sessions
    means trading all day (every day for `continuous`). Exchange calendars fall back to it
    beyond their table."""

    def __init__(self, name: str, sessions: tuple[tuple[_dt.time, _dt.time], ...] = (),
                 days: frozenset[int] = ALL_DAYS):
        self.name = name
        self.sessions = tuple(sorted(sessions))
        self.days = days
        self.fallbacks = 0  # never: it is its own rule

    @classmethod
    def named(cls, name: str, span: str = "") -> "SessionCalendar | ExchangeSessions":
        """calendar(name, span): kept under its old name for callers of earlier versions."""
        return calendar(name, span)

    def __repr__(self) -> str:
        return f"SessionCalendar({self.name!r})"

    def contains(self, t: _dt.datetime) -> bool:
        """Whether a bar ending at t lies inside a trading session."""
        return self.closed_reason(t) is None

    def closed_reason(self, t: _dt.datetime) -> str | None:
        """None inside a session; else 'closed_day', 'break' or 'outside_hours'."""
        day = t - _dt.timedelta(seconds=1) if t.time() == _dt.time(0) and self.sessions else t
        if day.weekday() not in self.days:
            return "closed_day"
        if not self.sessions:
            return None
        tod = t.time()
        if any(o < tod <= c for o, c in self.sessions):
            return None
        if self.sessions[0][0] < tod <= self.sessions[-1][1]:
            return "break"
        return "outside_hours"

    def opens_on(self, t: _dt.datetime) -> list[_dt.time]:
        """Session open times of t's day (the off_grid check counts bars from them)."""
        return [o for o, _ in self.sessions]

    def check_interval(self, interval: _dt.timedelta) -> None:
        """ValueError unless bars of this interval fit in a session (or are daily or longer)."""
        if interval <= _dt.timedelta(0):
            raise ValueError(f"interval must be positive, got {interval}")
        if self.sessions and interval < _dt.timedelta(days=1):
            longest = max(_span(o, c) for o, c in self.sessions)
            if interval > longest:
                raise ValueError(f"interval {interval} is longer than any session of {self.name!r}")

    def _next_times(self, last: _dt.datetime, interval: _dt.timedelta, n: int) -> list[_dt.datetime]:
        self.check_interval(interval)
        out = []
        t = last
        try:
            for _ in range(n):
                t = self._next(t, interval)
                out.append(t)
        except OverflowError:  # a bar dated near year 9999
            raise ValueError(f"no bar times after {last}: beyond the datetime range") from None
        return out

    def _next(self, t: _dt.datetime, interval: _dt.timedelta) -> _dt.datetime:
        c = t + interval
        if interval >= _dt.timedelta(days=1):
            # Daily (or longer) bars keep their time of day and skip closed days.
            while c.weekday() not in self.days:
                c += _dt.timedelta(days=1)
            return c
        if self.contains(c):
            return c
        # Past the close (or in a gap): first bar of the next session that ends after t.
        day = t.date()
        for _ in range(15):  # at most two weeks of closed days
            if day.weekday() in self.days:
                for o, cl in self.sessions:
                    first = _dt.datetime.combine(day, o) + interval
                    if first > t and first <= _dt.datetime.combine(day, cl):
                        return first
            day += _dt.timedelta(days=1)
        raise RuntimeError(f"no session found after {t} in {self.name!r}")


def _span(o: _dt.time, c: _dt.time) -> _dt.timedelta:
    d = _dt.date(2000, 1, 3)
    return _dt.datetime.combine(d, c) - _dt.datetime.combine(d, o)


CONTINUOUS = SessionCalendar("continuous")


class ExchangeSessions(_RemembersLast):
    """An exchange's calendar from `exchange_calendars`, as a SessionTable over its built
    range, with the weekday rule (`fallback`) beyond it. Same interface as SessionCalendar."""

    WARN_EVERY_S = 3600.0  # a fallback is logged at most this often per calendar (always counted)

    def __init__(self, code: str, table: SessionTable, span: tuple[str, str]):
        self.name = code
        self.table = table
        self.span = span  # the first and last session dates of the table
        self.sessions = table.regular
        self.fallback = SessionCalendar(f"{code} weekday rule", table.regular, table.weekdays)
        self.fallbacks = 0
        self._warned = -float("inf")
        self._last_closed: tuple = (None, None)  # closed_reason's last answer, by its argument

    def __repr__(self) -> str:
        return f"ExchangeSessions({self.name!r}, {self.span[0]}..{self.span[1]})"

    def contains(self, t: _dt.datetime) -> bool:
        return self.closed_reason(t) is None

    def closed_reason(self, t: _dt.datetime) -> str | None:
        """None inside a trading part; else 'closed_day' (weekend or holiday), 'break' (e.g.
        lunch) or 'outside_hours'. Beyond the table: the weekday rule's answer."""
        key, reason = self._last_closed
        if key == t:
            return reason
        s = epoch_seconds(t)
        reason = self.fallback.closed_reason(t) if not self.table.covers(s) else self.table.closed_reason(s)
        if t.tzinfo is None:  # aware times of one instant in two zones are equal, but not here
            self._last_closed = (t, reason)
        return reason

    def opens_on(self, t: _dt.datetime) -> list[_dt.time]:
        """The regular open times plus those of the parts that open on t's day (a late
        open, an afternoon part), for the off_grid check."""
        extra = [from_seconds(o).time() for o in self.table.opens_on(epoch_seconds(t))]
        return [o for o, _ in self.sessions] + [o for o in extra if o not in self.sessions]

    def _next_times(self, last: _dt.datetime, interval: _dt.timedelta, n: int) -> list[_dt.datetime]:
        """The parts of the calendar's sessions, then the weekday rule past the table's end."""
        step = self.check_interval(interval)
        daily = step >= DAY_S
        if n <= 0:
            return []
        s = epoch_seconds(last)
        if s < self.table.first_s:  # before the table: the weekday rule throughout
            self._fell_back(last)
            return self.fallback.next_times(last, interval, n)
        got, ran_out = (self.table.next_daily if daily else self.table.next_intraday)(s, step, n)
        out = [from_seconds(x) for x in got]
        if ran_out:
            self._fell_back(last)
            out += self.fallback.next_times(out[-1] if out else last, interval, n - len(out))
        return out

    def check_interval(self, interval: _dt.timedelta) -> int:
        """The interval in seconds; ValueError unless its bars fit in a session part (or are
        daily or longer)."""
        if interval <= _dt.timedelta(0):
            raise ValueError(f"interval must be positive, got {interval}")
        if interval.microseconds:
            raise ValueError(f"interval must be whole seconds, got {interval}")
        step = interval.days * DAY_S + interval.seconds
        if step < DAY_S and step > self.table.longest_part_s:
            raise ValueError(f"interval {interval} is longer than any session of {self.name!r}")
        return step

    def _fell_back(self, last: _dt.datetime) -> None:
        self.fallbacks += 1
        now = time.monotonic()
        if now - self._warned >= self.WARN_EVERY_S:
            self._warned = now
            log.warning("calendar %s covers %s..%s only: bar times after %s use its weekday rule (no holidays); "
                        "widen --calendar-range or upgrade exchange_calendars", self.name, *self.span, last)


# ---------------------------------------------------------------- building, once per code

_BUILT: dict[tuple[str, str], SessionCalendar | ExchangeSessions] = {}
_BUILD_LOCK = threading.Lock()


def calendar(name: str, span: str = "") -> SessionCalendar | ExchangeSessions:
    """The calendar a --sessions NAME means: `continuous`, `ashare`/`us`, or an exchange
    code (case-insensitive) built over `span` ('START:END' dates, either may be empty for
    the library's default; see parse_span). Built once per process per (code, span)."""
    name = name.strip()
    if name == "continuous":
        return CONTINUOUS
    code = resolve_code(name)
    key = (code, span or "")
    with _BUILD_LOCK:
        if key not in _BUILT:
            _BUILT[key] = _build(code, span)
        return _BUILT[key]


def built_calendars() -> list[SessionCalendar | ExchangeSessions]:
    """Every exchange calendar this process built (for metrics)."""
    return list(_BUILT.values())


def calendar_codes() -> list[str]:
    """The exchange codes `exchange_calendars` knows, aliases included, sorted."""
    import exchange_calendars as xc

    return sorted(xc.get_calendar_names(include_aliases=True))


def resolve_code(name: str) -> str:
    """'ashare' -> 'XSHG', 'nyse' -> 'XNYS' ...; ValueError (one line) for an unknown code."""
    import exchange_calendars as xc
    from exchange_calendars.calendar_utils import global_calendar_dispatcher as dispatcher

    if name in ALIASES or name.upper() in ALIASES:
        return ALIASES.get(name) or ALIASES[name.upper()]
    for candidate in (name, name.upper()):
        if candidate and dispatcher.has_calendar(candidate):
            return dispatcher.resolve_alias(candidate)
    known = xc.get_calendar_names(include_aliases=False)
    raise ValueError(f"unknown session calendar {name!r}: use continuous, ashare, us or an exchange code "
                     f"such as {', '.join(c for c in ('XSHG', 'XSHE', 'XHKG', 'XNYS', 'XLON') if c in known)}; "
                     f"{HOW_TO_LIST}")


def parse_span(span: str) -> tuple[_dt.date | None, _dt.date | None]:
    """'2000-01-01:2027-12-31', '2000-01-01:', ':2030-06-30' or '' -> (start, end) dates
    (None: the library's default)."""
    span = (span or "").strip()
    if not span:
        return None, None
    a, sep, b = span.partition(":")
    if not sep:
        raise ValueError(f"calendar range {span!r} must be START:END dates (either side may be empty)")
    try:
        start = _dt.date.fromisoformat(a.strip()) if a.strip() else None
        end = _dt.date.fromisoformat(b.strip()) if b.strip() else None
    except ValueError:
        raise ValueError(f"calendar range {span!r}: dates must be YYYY-MM-DD") from None
    if start and end and start >= end:
        raise ValueError(f"calendar range {span!r}: START must be before END")
    return start, end


def _build(code: str, span: str) -> ExchangeSessions:
    """exchange_calendars' calendar over the span (clipped to the dates the library records
    holidays for, with a warning), turned into a SessionTable."""
    import pandas as pd
    import exchange_calendars as xc
    from exchange_calendars.calendar_utils import global_calendar_dispatcher as dispatcher

    start, end = parse_span(span)
    factory = getattr(dispatcher, "_calendar_factories", {}).get(code)
    kwargs = {}
    for side, want in (("start", start), ("end", end)):
        if want is None:
            continue
        ts = pd.Timestamp(want)
        bound = None
        if factory is not None:
            bound = factory.bound_min() if side == "start" else factory.bound_max()
        if bound is not None and (ts < bound if side == "start" else ts > bound):
            log.warning("calendar %s: the library records it from %s to %s only; --calendar-range %s %s clipped "
                        "to %s", code, factory.bound_min() or "any time", factory.bound_max() or "any time",
                        side, want, bound.date())
            ts = bound
        kwargs[side] = ts
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # the library's pandas deprecation notes, once per build: not ours to fix
            warnings.simplefilter("ignore")
            cal = xc.get_calendar(code, **kwargs) if kwargs else xc.get_calendar(code)
            table = SessionTable.from_calendar(code, cal)
    except Exception as exc:  # noqa: BLE001 - e.g. a calendar this pandas cannot build
        first = (str(exc).splitlines() or [""])[0]
        first = first if len(first) <= 100 else first[:97] + "..."
        raise ValueError(f"calendar {code} cannot be built by exchange_calendars {xc.__version__} here: "
                         f"{type(exc).__name__}: {first}".rstrip(": ")) from None
    span_dates = (str(cal.first_session.date()), str(cal.last_session.date()))
    log.info("calendar %s: %d sessions %s..%s built in %.2fs", code, len(table.days), *span_dates,
             time.perf_counter() - t0)
    return ExchangeSessions(code, table, span_dates)


# ---------------------------------------------------------------- per-symbol maps


def symbol_map(spec: str, value_of: Callable[[str], T], default: T, *,
               what: str = "session map") -> Callable[[str], T]:
    """'PATTERN=NAME,...' (fnmatch, case-sensitive, first match wins; a bare NAME means
    '*=NAME') -> symbol -> value_of(NAME); symbols that match nothing get `default`. Each
    symbol's answer is cached. An entry with an empty pattern ('=NAME') is an error: it
    would match nothing."""
    rules: list[tuple[str, T]] = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        pattern, sep, name = part.rpartition("=")
        pattern = pattern.strip() if sep else "*"
        if not pattern:
            raise ValueError(f"empty symbol pattern in {what} entry {part!r}")
        rules.append((pattern, value_of(name.strip())))
    cache: dict[str, T] = {}

    def lookup(symbol: str) -> T:
        try:
            return cache[symbol]
        except KeyError:
            pass
        value = next((v for p, v in rules if fnmatch.fnmatchcase(symbol, p)), default)
        if len(cache) >= 100_000:  # bound memory if a feed sends endless new symbols
            cache.clear()
        cache[symbol] = value
        return value

    lookup.values = list({id(v): v for v in [v for _, v in rules] + [default]}.values())  # distinct answers
    return lookup


def calibration_groups(spec: str) -> Callable[[str], str]:
    """--calibration-groups: 'PATTERN=GROUP,...' (symbol_map's rules) -> symbol -> the pool
    its calibration is learnt in; symbols no rule matches pool as 'all'."""
    return symbol_map(spec, str, "all", what="calibration group")


def parse_session_map(spec: str, span: str = "") -> Callable[[str], SessionCalendar | ExchangeSessions]:
    """'continuous' or 'PATTERN=NAME,...' (symbol_map's rules) -> symbol -> calendar, each
    NAME built once (see calendar(); `span` is --calendar-range). Symbols that match nothing
    get 'continuous'. The lookup's `values` lists the distinct calendars it can answer."""
    lookup = symbol_map(spec, lambda name: calendar(name, span), CONTINUOUS)
    return lookup

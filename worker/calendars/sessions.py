"""Trading-session calendars: the timestamps of the bars that come after a given bar.

Bars are labelled by their END time (a 5-minute bar stamped 09:35 covers
09:30-09:35), so a session (open, close] holds bars at open+interval, ...,
close. All times are naive wall-clock times in the exchange's own zone, the same
convention as Bar.time.

Holidays: neither `exchange_calendars` nor `holidays` is installed in this
project, so the named calendars skip weekends only. A forecast made on the eve
of a holiday is therefore stamped as if the market opened that day; the values
are still the next bars the model expects.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WEEKDAYS = frozenset(range(5))  # Monday=0 .. Friday=4
ALL_DAYS = frozenset(range(7))


class SessionCalendar:
    """Trading days plus intraday sessions. No sessions means trading never stops."""

    def __init__(self, name: str, sessions: tuple[tuple[_dt.time, _dt.time], ...] = (),
                 days: frozenset[int] = ALL_DAYS):
        self.name = name
        self.sessions = tuple(sorted(sessions))
        self.days = days

    @classmethod
    def named(cls, name: str) -> "SessionCalendar":
        try:
            return CALENDARS[name]
        except KeyError:
            raise ValueError(f"unknown session calendar {name!r}; valid: {', '.join(sorted(CALENDARS))}") from None

    def __repr__(self) -> str:
        return f"SessionCalendar.named({self.name!r})"

    def contains(self, t: _dt.datetime) -> bool:
        """Whether a bar ending at t lies inside a trading session."""
        if t.weekday() not in self.days:
            return False
        if not self.sessions:
            return True
        tod = t.time()
        return any(o < tod <= c for o, c in self.sessions)

    def next_times(self, last: _dt.datetime, interval: _dt.timedelta, n: int) -> list[_dt.datetime]:
        """The n bar times after `last` (which need not itself be in a session)."""
        if interval <= _dt.timedelta(0):
            raise ValueError(f"interval must be positive, got {interval}")
        if self.sessions and interval < _dt.timedelta(days=1):
            longest = max(_span(o, c) for o, c in self.sessions)
            if interval > longest:
                raise ValueError(f"interval {interval} is longer than any session of {self.name!r}")
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


CALENDARS: dict[str, SessionCalendar] = {
    "continuous": SessionCalendar("continuous"),
    # Shanghai/Shenzhen: morning and afternoon sessions, bars 09:35..11:30 and 13:05..15:00.
    "ashare": SessionCalendar(
        "ashare", ((_dt.time(9, 30), _dt.time(11, 30)), (_dt.time(13, 0), _dt.time(15, 0))), WEEKDAYS),
    # NYSE/Nasdaq regular hours, exchange local time; early closes are not modelled.
    "us": SessionCalendar("us", ((_dt.time(9, 30), _dt.time(16, 0)),), WEEKDAYS),
}


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

    return lookup


def calibration_groups(spec: str) -> Callable[[str], str]:
    """--calibration-groups: 'PATTERN=GROUP,...' (symbol_map's rules) -> symbol -> the pool
    its calibration is learnt in; symbols no rule matches pool as 'all'."""
    return symbol_map(spec, str, "all", what="calibration group")


def parse_session_map(spec: str) -> Callable[[str], SessionCalendar]:
    """'continuous' or 'PATTERN=NAME,...' (symbol_map's rules) -> symbol -> SessionCalendar.
    Symbols that match nothing get 'continuous'."""
    return symbol_map(spec, SessionCalendar.named, CALENDARS["continuous"])

"""A session table: an exchange calendar's trading periods as plain integers, for fast lookups.

`exchange_calendars` answers with pandas objects and its constructor takes up to a second,
so a calendar is built once per code (worker/calendars/sessions.py caches it) and turned into this
table: every trading *part* of every session (a session with a lunch break has two parts,
open..break_start and break_end..close; early closes and late opens are in the calendar's
own times; holidays simply have no session) as wall-clock seconds since 1970-01-01 in the
exchange's own time zone, the convention of Bar.time. A DST change moves nothing in local
time, so the table has no zone left in it. The next N bar times are then a bisect and some
integer arithmetic, no pandas.

Bars are labelled by their END time: a part (open, close] holds bars open+interval, ...,
up to close (a last bar that would end after the close is not made).
"""
from __future__ import annotations

import datetime as _dt
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass

import numpy as np

DAY_S = 86_400
EPOCH = _dt.datetime(1970, 1, 1)


def from_seconds(s: int) -> _dt.datetime:
    """The inverse of worker.contracts.events.epoch_seconds: seconds since 1970 -> that wall clock."""
    return EPOCH + _dt.timedelta(seconds=s)


@dataclass
class SessionTable:
    """Trading parts of a calendar over its built range, sorted, as Python int lists
    (bisect on a list of ints beats numpy's searchsorted for one value at a time)."""
    code: str
    tz: str
    opens: list[int]          # part k is (opens[k], closes[k]], wall-clock seconds
    closes: list[int]
    session_of: list[int]     # part k belongs to session session_of[k] (0-based)
    days: list[int]           # session labels as days since 1970-01-01, one per session
    part_days: list[int]      # the wall-clock days any part touches (days since 1970-01-01, sorted, unique)
    regular: tuple[tuple[_dt.time, _dt.time], ...]  # the most common parts of a session (the weekday rule's)
    weekdays: frozenset[int]  # Monday=0 .. Sunday=6, from the calendar's weekmask

    @property
    def first_s(self) -> int:
        return self.opens[0]

    @property
    def last_s(self) -> int:
        return self.closes[-1]

    def __post_init__(self):
        self.longest_part_s = int(max(c - o for o, c in zip(self.opens, self.closes)))

    @classmethod
    def from_calendar(cls, code: str, cal) -> "SessionTable":
        """From an exchange_calendars.ExchangeCalendar (pandas is used here, once)."""
        tz = str(cal.tz)

        def wall(series) -> np.ndarray:
            # UTC instants -> the exchange's wall clock -> int seconds; NaT (no break) -> -1
            local = series.dt.tz_convert(cal.tz).dt.tz_localize(None)
            out = local.to_numpy("datetime64[s]").astype("int64")
            out[local.isna().to_numpy()] = -1
            return out

        o, c = wall(cal.opens), wall(cal.closes)
        bs, be = wall(cal.break_starts), wall(cal.break_ends)
        labels = (cal.sessions.to_numpy("datetime64[D]").astype("int64")).tolist()
        opens, closes, session_of = [], [], []
        for i in range(len(o)):
            if bs[i] >= 0 and be[i] >= 0 and o[i] < bs[i] < be[i] < c[i]:
                parts = ((o[i], bs[i]), (be[i], c[i]))
            else:
                parts = ((o[i], c[i]),)
            for po, pc in parts:
                if pc > po:
                    opens.append(int(po))
                    closes.append(int(pc))
                    session_of.append(i)
        if not opens:
            raise ValueError(f"calendar {code} has no sessions in its range")
        days = sorted({d for po, pc in zip(opens, closes) for d in range(po // DAY_S, (pc - 1) // DAY_S + 1)})
        mask = str(getattr(cal, "weekmask", "1111100"))
        weekdays = frozenset(i for i, ch in enumerate(mask[:7]) if ch == "1")
        return cls(code, tz, opens, closes, session_of, labels, days,
                   _regular_parts(opens, closes, session_of), weekdays or frozenset(range(5)))

    # -- lookups --------------------------------------------------------------------------
    def next_intraday(self, t: int, step: int, n: int) -> tuple[list[int], bool]:
        """Up to n bar times after t (seconds) for an intraday step; the flag is True when
        the table ran out before n (the caller goes on with another rule)."""
        opens, closes = self.opens, self.closes
        out: list[int] = []
        k = bisect_left(closes, t)  # first part that closes at or after t
        if k >= len(closes):
            return out, True
        nxt = t + step if opens[k] < t else opens[k] + step  # inside part k: keep the bar's own phase
        while len(out) < n:
            if nxt <= closes[k]:
                out.append(nxt)
                nxt += step
                continue
            k += 1
            if k >= len(closes):
                return out, True
            nxt = opens[k] + step
        return out, False

    def next_daily(self, t: int, step: int, n: int) -> tuple[list[int], bool]:
        """Daily (or longer) bars keep the time of day of t and land on sessions only: each
        is the first session on or after the previous bar's day + step."""
        tod = t % DAY_S
        days = self.days
        out: list[int] = []
        day = t // DAY_S
        while len(out) < n:
            j = bisect_left(days, (day * DAY_S + step) // DAY_S)
            if j >= len(days):
                return out, True
            day = days[j]
            out.append(day * DAY_S + tod)
        return out, False

    def closed_reason(self, t: int) -> str | None:
        """Why a bar ending at t lies in no trading part: 'closed_day' (no part touches
        its day: a weekend or a holiday), 'break' (between two parts of one session, e.g.
        lunch) or 'outside_hours'; None when it is inside a part."""
        k = bisect_left(self.closes, t)
        if k < len(self.closes) and self.opens[k] < t:
            return None
        if t % DAY_S == 0:
            day = t // DAY_S - 1  # a bar ending at midnight belongs to the day before
        else:
            day = t // DAY_S
        j = bisect_left(self.part_days, day)
        if j >= len(self.part_days) or self.part_days[j] != day:
            return "closed_day"
        if 0 < k < len(self.closes) and self.session_of[k] == self.session_of[k - 1]:
            return "break"
        return "outside_hours"

    def opens_on(self, t: int) -> list[int]:
        """Open times (seconds) of the parts opening on t's wall-clock day."""
        day0 = (t // DAY_S) * DAY_S
        i = bisect_left(self.opens, day0)
        j = bisect_right(self.opens, day0 + DAY_S - 1)
        return self.opens[i:j]

    def parts_of_session(self, day: int) -> list[tuple[int, int]] | None:
        """(open, close) seconds of the parts of the session labelled `day` (days since
        1970-01-01); None when the day has no session."""
        i = bisect_left(self.days, day)
        if i >= len(self.days) or self.days[i] != day:
            return None
        k = bisect_left(self.session_of, i)
        out = []
        while k < len(self.session_of) and self.session_of[k] == i:
            out.append((self.opens[k], self.closes[k]))
            k += 1
        return out

    def covers(self, t: int) -> bool:
        """Whether t lies within the table's span (first open .. last close)."""
        return self.first_s <= t <= self.last_s


def _regular_parts(opens, closes, session_of) -> tuple[tuple[_dt.time, _dt.time], ...]:
    """The commonest set of parts of a session, as times of day (the weekday rule beyond the
    table). A part that crosses midnight (overnight futures) gives () = trade all day."""
    by_session: dict[int, list[tuple[int, int]]] = {}
    for o, c, s in zip(opens, closes, session_of):
        if (c - 1) // DAY_S != o // DAY_S:
            return ()
        by_session.setdefault(s, []).append((o % DAY_S, (c - 1) % DAY_S + 1))
    pattern, _ = Counter(tuple(p) for p in by_session.values()).most_common(1)[0]
    if pattern == ((0, DAY_S),):  # 24/7 and the like
        return ()

    def tod(s: int) -> _dt.time:
        return _dt.time.max if s >= DAY_S else _dt.time(s // 3600, s // 60 % 60, s % 60)

    return tuple((tod(o), tod(c)) for o, c in pattern)

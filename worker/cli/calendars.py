"""`kronos-rt calendars`: the trading calendars --sessions accepts, with their sessions on a date.

    kronos-rt calendars                       # every exchange code, sessions today
    kronos-rt calendars XSHG XHKG XNYS --date 2024-02-09

One line per calendar: code, aliases, time zone, the session parts of that date in
exchange-local wall-clock time (`closed` on a weekend or holiday; an early close shows as
its shorter part) and the span of dates the table is built for (--calendar-range widens
it). Codes the installed exchange_calendars cannot build here say so instead of failing
the listing. Exit codes: 0 ok, 2 an unknown code or a bad date.
"""
from __future__ import annotations

import argparse
import datetime as _dt

from worker.errors import ConfigError

USAGE_ERRORS = (ValueError,)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("codes", nargs="*", metavar="CODE",
                        help="calendars to show (default: every code exchange_calendars knows); "
                             "aliases and ashare/us are accepted")
    parser.add_argument("--date", help="the date whose sessions are shown, YYYY-MM-DD (default: today)")
    parser.add_argument("--calendar-range", default="", metavar="START:END",
                        help="dates the tables are built for, as the worker's flag (default: the library's)")


def session_line(cal, day: _dt.date) -> str:
    """'09:30-11:30 13:00-15:00', 'closed' or, past the table, the weekday rule's answer."""
    from worker.calendars.session_table import DAY_S, from_seconds

    label = (day - _dt.date(1970, 1, 1)).days
    if cal.table.first_s // DAY_S <= label <= cal.table.last_s // DAY_S:
        parts = cal.table.parts_of_session(label)
        if parts is None:
            return "closed"
        return " ".join(f"{_hm(from_seconds(o), day)}-{_hm(from_seconds(c), day)}" for o, c in parts)
    rule = cal.fallback
    if day.weekday() not in rule.days:
        return "closed (weekday rule: past the table)"
    parts = " ".join(f"{o:%H:%M}-{c:%H:%M}" for o, c in rule.sessions) or "all day"
    return f"{parts} (weekday rule: past the table)"


def _hm(t: _dt.datetime, day: _dt.date) -> str:
    """HH:MM, with the date when the part opens or closes on another day (overnight futures)."""
    if t.date() == day:
        return f"{t:%H:%M}"
    if t == _dt.datetime.combine(day, _dt.time()) + _dt.timedelta(days=1):
        return "24:00"
    return f"{t:%m-%d %H:%M}"


def main(args: argparse.Namespace) -> int:
    import exchange_calendars as xc

    from worker.calendars.sessions import ALIASES, calendar, parse_span, resolve_code
    from worker.tools.tables import format_columns

    try:
        day = _dt.date.fromisoformat(args.date) if args.date else _dt.date.today()
    except ValueError:
        raise ConfigError(f"--date {args.date!r} must be YYYY-MM-DD") from None
    try:
        parse_span(args.calendar_range)
    except ValueError as exc:
        raise ConfigError(f"--calendar-range: {exc}") from None
    codes = [resolve_code(c) for c in args.codes] or xc.get_calendar_names(include_aliases=False)
    aliases: dict[str, list[str]] = {}
    for alias, code in {**xc.calendar_utils.global_calendar_dispatcher.aliases_to_names(), **ALIASES}.items():
        aliases.setdefault(code, []).append(alias)
    rows = []
    for code in dict.fromkeys(codes):
        try:
            cal = calendar(code, args.calendar_range)
        except ValueError as exc:
            rows.append([code, ",".join(sorted(aliases.get(code, []))) or "-", "-", f"unavailable: {exc}", "-"])
            continue
        rows.append([code, ",".join(sorted(aliases.get(code, []))) or "-", cal.table.tz, session_line(cal, day),
                     f"{cal.span[0]}..{cal.span[1]}"])
    print(f"Sessions on {day} ({day:%A}), exchange-local time. --sessions takes CODE, an alias, "
          "or continuous (24/7).\n")
    print(format_columns(rows, ["code", "aliases", "time zone", "sessions", "table"]))
    return 0

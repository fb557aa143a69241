"""Exchange calendars (worker/calendars/sessions.py, worker/calendars/session_table.py) on real dates: holidays,
early closes, lunch breaks, DST, year ends, other intervals, the range and its fallback,
closed periods, and agreement with exchange_calendars' own trading index."""
import datetime as dt
import logging

import pandas as pd
import pytest

from worker.calendars.sessions import ExchangeSessions, SessionCalendar, calendar, parse_session_map, parse_span

D = dt.datetime
M1, M5, M15, H1, D1 = (dt.timedelta(minutes=1), dt.timedelta(minutes=5), dt.timedelta(minutes=15),
                       dt.timedelta(hours=1), dt.timedelta(days=1))


def test_spring_festival_2024_on_xshg():
    cal = calendar("XSHG")
    # Thu 2024-02-08 is the last session before the holiday; Shanghai reopens Mon 2024-02-19.
    assert cal.next_times(D(2024, 2, 8, 14, 55), M5, 4) == [
        D(2024, 2, 8, 15, 0), D(2024, 2, 19, 9, 35), D(2024, 2, 19, 9, 40), D(2024, 2, 19, 9, 45)]
    assert cal.next_times(D(2024, 2, 8, 15, 0), M5, 12)[0] == D(2024, 2, 19, 9, 35)
    assert calendar("ashare") is cal and calendar("xshe") is cal  # aliases: one calendar, built once
    assert cal.closed_reason(D(2024, 2, 9, 9, 35)) == "closed_day"
    assert cal.closed_reason(D(2024, 2, 19, 9, 35)) is None
    # The weekday rule this replaces stamped the closed Friday.
    rule = SessionCalendar("weekdays", cal.sessions, cal.table.weekdays)
    assert rule.next_times(D(2024, 2, 8, 15, 0), M5, 1) == [D(2024, 2, 9, 9, 35)]


def test_national_day_week_2024_on_xshg():
    cal = calendar("XSHG")
    assert cal.next_times(D(2024, 9, 30, 15, 0), M5, 2) == [D(2024, 10, 8, 9, 35), D(2024, 10, 8, 9, 40)]
    assert cal.next_times(D(2024, 9, 30, 15, 0), D1, 2) == [D(2024, 10, 8, 15, 0), D(2024, 10, 9, 15, 0)]
    assert cal.next_times(D(2024, 9, 30, 11, 15), M15, 2) == [D(2024, 9, 30, 11, 30), D(2024, 9, 30, 13, 15)]
    for day in range(1, 8):
        assert cal.closed_reason(D(2024, 10, day, 10, 0)) == "closed_day"


def test_xhkg_lunch_break_and_christmas_eve_half_day():
    cal = calendar("XHKG")
    assert cal.next_times(D(2024, 12, 23, 11, 55), M5, 3) == [
        D(2024, 12, 23, 12, 0), D(2024, 12, 23, 13, 5), D(2024, 12, 23, 13, 10)]
    assert cal.next_times(D(2024, 12, 23, 11, 58), M1, 3) == [
        D(2024, 12, 23, 11, 59), D(2024, 12, 23, 12, 0), D(2024, 12, 23, 13, 1)]
    assert cal.closed_reason(D(2024, 12, 23, 12, 30)) == "break"
    # 24 Dec: morning only; 25 and 26 Dec: holidays.
    assert cal.next_times(D(2024, 12, 24, 11, 55), M5, 2) == [D(2024, 12, 24, 12, 0), D(2024, 12, 27, 9, 35)]
    assert cal.closed_reason(D(2024, 12, 24, 13, 30)) == "outside_hours"


def test_xnys_thanksgiving_and_its_early_close():
    cal = calendar("XNYS")
    assert cal.next_times(D(2024, 11, 27, 15, 55), M5, 3) == [
        D(2024, 11, 27, 16, 0), D(2024, 11, 29, 9, 35), D(2024, 11, 29, 9, 40)]
    # The day after closes at 13:00: no bars stamped 13:05 .. 16:00.
    assert cal.next_times(D(2024, 11, 29, 12, 55), M5, 3) == [
        D(2024, 11, 29, 13, 0), D(2024, 12, 2, 9, 35), D(2024, 12, 2, 9, 40)]
    assert cal.next_times(D(2024, 11, 29, 13, 0), M5, 1) == [D(2024, 12, 2, 9, 35)]
    assert cal.closed_reason(D(2024, 11, 29, 14, 0)) == "outside_hours"
    assert cal.closed_reason(D(2024, 11, 28, 12, 0)) == "closed_day"
    # Hourly bars from the 09:30 open: 10:30, 11:30, 12:30 (13:30 is past the early close).
    assert cal.next_times(D(2024, 11, 29, 9, 30), H1, 4) == [
        D(2024, 11, 29, 10, 30), D(2024, 11, 29, 11, 30), D(2024, 11, 29, 12, 30), D(2024, 12, 2, 10, 30)]


def test_juneteenth_2024():
    cal = calendar("us")
    assert cal.next_times(D(2024, 6, 18, 15, 55), M5, 2) == [D(2024, 6, 18, 16, 0), D(2024, 6, 20, 9, 35)]
    assert cal.next_times(D(2024, 6, 18, 16, 0), D1, 2) == [D(2024, 6, 20, 16, 0), D(2024, 6, 21, 16, 0)]


def test_dst_weekends_move_nothing_in_local_time():
    us = calendar("XNYS")  # clocks forward on Sun 2024-03-10
    assert us.next_times(D(2024, 3, 8, 15, 55), M5, 2) == [D(2024, 3, 8, 16, 0), D(2024, 3, 11, 9, 35)]
    assert us.next_times(D(2024, 11, 1, 16, 0), M5, 1) == [D(2024, 11, 4, 9, 35)]  # and back on 3 Nov
    lon = calendar("XLON")  # UK clocks forward on Sun 2024-03-31, inside the Easter closure
    assert lon.next_times(D(2024, 3, 28, 16, 25), M5, 2) == [D(2024, 3, 28, 16, 30), D(2024, 4, 2, 8, 5)]


def test_year_end():
    assert calendar("XNYS").next_times(D(2024, 12, 31, 15, 55), M5, 2) == [D(2024, 12, 31, 16, 0), D(2025, 1, 2, 9, 35)]
    assert calendar("XSHG").next_times(D(2024, 12, 31, 15, 0), M5, 1) == [D(2025, 1, 2, 9, 35)]
    assert calendar("XNYS").next_times(D(2024, 12, 24, 12, 55), M5, 2) == [D(2024, 12, 24, 13, 0), D(2024, 12, 26, 9, 35)]


@pytest.mark.parametrize("code,start,end,freq", [
    ("XSHG", "2024-02-01", "2024-02-29", "5min"), ("XSHG", "2024-09-25", "2024-10-12", "15min"),
    ("XHKG", "2024-12-18", "2025-01-06", "5min"), ("XNYS", "2024-11-20", "2025-01-06", "5min"),
    ("XNYS", "2024-03-04", "2024-03-15", "1min"), ("XTKS", "2024-12-25", "2025-01-10", "5min"),
])
def test_chained_next_times_equal_the_librarys_trading_index(code, start, end, freq):
    """Every bar time of the span, right-labelled in local wall-clock time as the library's own
    trading_index gives it, and next_times walking from the first one."""
    import exchange_calendars as xc

    lib = xc.get_calendar(code)
    want = [t.to_pydatetime() for t in lib.trading_index(start, end, freq, intervals=False, closed="right",
                                                        force=True).tz_convert(lib.tz).tz_localize(None)]
    got = [want[0]] + calendar(code).next_times(want[0], pd.Timedelta(freq).to_pytimedelta(), len(want) - 1)
    assert got == want
    assert all(calendar(code).contains(t) for t in want)


def test_bar_off_its_grid_keeps_its_phase_and_a_bar_in_a_gap_continues_at_the_next_part():
    cal = calendar("XSHG")
    assert cal.next_times(D(2024, 2, 8, 10, 7), M5, 2) == [D(2024, 2, 8, 10, 12), D(2024, 2, 8, 10, 17)]
    assert cal.next_times(D(2024, 2, 8, 12, 10), M5, 1) == [D(2024, 2, 8, 13, 5)]   # lunch
    assert cal.next_times(D(2024, 2, 10, 10, 0), M5, 1) == [D(2024, 2, 19, 9, 35)]  # a holiday Saturday


def test_past_the_table_the_weekday_rule_with_a_warning_and_a_count(caplog):
    cal = calendar("XNYS", "2024-01-01:2024-12-31")
    assert cal.span == ("2024-01-02", "2024-12-31")
    before = cal.fallbacks
    with caplog.at_level(logging.WARNING, logger="worker.calendars.sessions"):
        got = cal.next_times(D(2024, 12, 31, 15, 55), M5, 3)
    # 1 Jan 2025 is a holiday the weekday rule cannot know: beyond the table, stamped anyway.
    assert got == [D(2024, 12, 31, 16, 0), D(2025, 1, 1, 9, 35), D(2025, 1, 1, 9, 40)]
    assert cal.fallbacks == before + 1
    assert "weekday rule" in caplog.text and "--calendar-range" in caplog.text
    assert cal.next_times(D(2023, 11, 23, 15, 55), M5, 1) == [D(2023, 11, 23, 16, 0)]  # before it too
    assert cal.fallbacks == before + 2
    assert cal.closed_reason(D(2025, 1, 4, 10, 0)) == "closed_day"  # a Saturday by the weekday rule
    assert cal.next_times(D(2030, 1, 4, 15, 55), D1, 1) == [D(2030, 1, 7, 15, 55)]  # daily past it: no crash


def test_a_repeated_call_is_answered_from_memory_and_still_counts_its_fallback():
    """Every symbol of a burst asks about one bar time: the answer is remembered, handed out
    as a fresh list each time, and a fallback is counted per call as when computed."""
    cal = calendar("XNYS", "2024-01-01:2024-12-31")
    last = D(2024, 12, 31, 15, 55)
    first = cal.next_times(last, M5, 3)
    before = cal.fallbacks
    again = cal.next_times(last, M5, 3)
    assert again == first and again is not first
    again.append(None)  # a caller's change stays its own
    assert cal.next_times(last, M5, 3) == first
    assert cal.fallbacks == before + 2
    inside = cal.next_times(D(2024, 6, 3, 10, 0), M5, 2)  # another time: computed, nothing counted
    assert inside == [D(2024, 6, 3, 10, 5), D(2024, 6, 3, 10, 10)] and cal.fallbacks == before + 2
    assert cal.next_times(D(2024, 6, 3, 10, 0), M5, 3)[-1] == D(2024, 6, 3, 10, 15)  # n is part of the question
    utc = D(2024, 6, 3, 14, 0).replace(tzinfo=dt.timezone.utc)  # aware times are never remembered
    assert cal.next_times(utc, M5, 1) == cal.next_times(utc, M5, 1)
    weekday = SessionCalendar("weekdays", ((dt.time(9, 30), dt.time(16, 0)),), frozenset(range(5)))
    assert weekday.next_times(D(2024, 6, 7, 15, 55), M5, 2) == weekday.next_times(D(2024, 6, 7, 15, 55), M5, 2) \
        == [D(2024, 6, 7, 16, 0), D(2024, 6, 10, 9, 35)]
    assert cal.closed_reason(D(2024, 7, 4, 10, 0)) == cal.closed_reason(D(2024, 7, 4, 10, 0)) == "closed_day"
    assert cal.closed_reason(D(2024, 7, 5, 10, 0)) is None


def test_range_widens_and_is_clipped_to_what_the_library_records(caplog):
    wide = calendar("XNYS", "2001-01-01:")
    assert wide.span[0] == "2001-01-02"
    assert wide.next_times(D(2001, 9, 10, 16, 0), M5, 1) == [D(2001, 9, 17, 9, 35)]  # closed after 9/11
    with caplog.at_level(logging.WARNING, logger="worker.calendars.sessions"):
        clipped = calendar("XSHG", ":2035-12-31")
    assert clipped.span[1] <= "2035-12-31" and "clipped" in caplog.text
    for bad in ("2024-01-01", "2024-13-01:", "2025-01-01:2024-01-01"):
        with pytest.raises(ValueError):
            parse_span(bad)


def test_config_checks_codes_and_range_at_start_up():
    from worker.config import Settings
    from worker.errors import ConfigError

    s = Settings(sessions="*.SH=XSHG,*.SZ=XSHE,*.HK=XHKG,*=XNYS", calendar_range="2010-01-01:")
    assert s.sessions
    with pytest.raises(ConfigError, match="--sessions .*unknown session calendar 'XXXX'.*kronos-rt calendars"):
        Settings(sessions="*.SH=XXXX")
    with pytest.raises(ConfigError, match="--calendar-range"):
        Settings(calendar_range="tomorrow")


def test_exchange_calendar_is_a_drop_in_for_the_session_map():
    lookup = parse_session_map("*.SH=XSHG,*.HK=XHKG,BTC*=continuous,*=XNYS")
    assert isinstance(lookup("600000.SH"), ExchangeSessions)
    assert lookup("BTC-USD").next_times(D(2024, 2, 10, 23, 55), M5, 1) == [D(2024, 2, 11, 0, 0)]
    assert {c.name for c in lookup.values} == {"XSHG", "XHKG", "continuous", "XNYS"}


def test_off_grid_counts_from_each_days_own_opens():
    from worker.contracts import events

    policy = events.BarPolicy(H1, calendar_for=parse_session_map("*=XNYS"))
    bar = events.parse_bar(b'{"schema":"bar.v1","symbol":"A","ts":"2024-11-29T10:30:00","open":1,"high":1,'
                           b'"low":1,"close":1}', policy=policy)
    assert bar.ts == "2024-11-29T10:30:00"
    with pytest.raises(events.InvalidEvent, match="off_grid"):
        events.parse_bar(b'{"schema":"bar.v1","symbol":"A","ts":"2024-11-29T10:20:00","open":1,"high":1,'
                         b'"low":1,"close":1}', policy=policy)


def test_an_interval_longer_than_every_session_is_refused_at_start_up():
    from worker.config import Settings
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="--sessions '\\*.SH=XSHG': interval 3:00:00 is longer than any session "
                                          "of 'XSHG'"):
        Settings(sessions="*.SH=XSHG", interval="3h")
    assert Settings(sessions="*.SH=XSHG", interval="1d").interval == "1d"
    assert Settings(sessions="*=continuous", interval="3h").interval == "3h"


def test_fallbacks_are_exported_as_a_metric():
    from prometheus_client import generate_latest

    from worker.ops.metrics import WorkerMetrics

    cal = calendar("XSHG", "2024-01-01:2024-06-30")
    cal.next_times(D(2024, 6, 28, 15, 0), M5, 2)
    text = generate_latest(WorkerMetrics().registry).decode()
    line = next(ln for ln in text.splitlines() if ln.startswith('kronos_rt_calendar_fallbacks_total{calendar="XSHG"}'))
    assert float(line.split()[-1]) >= 1

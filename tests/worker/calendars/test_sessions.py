"""worker/calendars/sessions.py: future bar timestamps, checked against a real A-share tape and the
holidays, early closes and lunch breaks of real exchange calendars (tests/worker/calendars/test_calendars.py)."""
import datetime as dt

import pandas as pd
import pytest

from worker.calendars.sessions import SessionCalendar, parse_session_map
from worker.tools import TAPE

FIVE = dt.timedelta(minutes=5)


def test_ashare_matches_real_tape():
    times = pd.read_csv(TAPE, usecols=["timestamps"], parse_dates=["timestamps"])["timestamps"]
    times = [t.to_pydatetime() for t in times]
    cal = SessionCalendar.named("ashare")
    checked = agree = 0
    for i in range(len(times) - 12):
        checked += 1
        agree += cal.next_times(times[i], FIVE, 12) == times[i + 1:i + 13]
    # The tape (2024-06-18..08-29, XSHG) has no missing bars and no exchange holidays.
    assert checked > 2400
    assert agree == checked


def test_ashare_lunch_break_overnight_and_weekend():
    cal = SessionCalendar.named("ashare")
    assert cal.next_times(dt.datetime(2024, 6, 18, 11, 25), FIVE, 3) == [
        dt.datetime(2024, 6, 18, 11, 30), dt.datetime(2024, 6, 18, 13, 5), dt.datetime(2024, 6, 18, 13, 10)]
    assert cal.next_times(dt.datetime(2024, 6, 21, 14, 55), FIVE, 3) == [  # Friday
        dt.datetime(2024, 6, 21, 15, 0), dt.datetime(2024, 6, 24, 9, 35), dt.datetime(2024, 6, 24, 9, 40)]
    # A bar outside any session (late print) continues with the next session.
    assert cal.next_times(dt.datetime(2024, 6, 22, 10, 0), FIVE, 1) == [dt.datetime(2024, 6, 24, 9, 35)]
    assert cal.next_times(dt.datetime(2024, 6, 18, 11, 30), dt.timedelta(minutes=30), 2) == [
        dt.datetime(2024, 6, 18, 13, 30), dt.datetime(2024, 6, 18, 14, 0)]


def test_us_session():
    cal = SessionCalendar.named("us")
    assert cal.next_times(dt.datetime(2024, 6, 14, 15, 55), FIVE, 2) == [  # Friday
        dt.datetime(2024, 6, 14, 16, 0), dt.datetime(2024, 6, 17, 9, 35)]
    hourly = cal.next_times(dt.datetime(2024, 6, 17, 15, 30), dt.timedelta(hours=1), 2)
    assert hourly == [dt.datetime(2024, 6, 18, 10, 30), dt.datetime(2024, 6, 18, 11, 30)]
    assert not cal.contains(dt.datetime(2024, 6, 17, 9, 30)) and cal.contains(dt.datetime(2024, 6, 17, 16, 0))


def test_daily_bars_skip_weekends():
    cal = SessionCalendar.named("ashare")
    assert cal.next_times(dt.datetime(2024, 6, 20, 15, 0), dt.timedelta(days=1), 3) == [
        dt.datetime(2024, 6, 21, 15, 0), dt.datetime(2024, 6, 24, 15, 0), dt.datetime(2024, 6, 25, 15, 0)]


def test_continuous_is_every_interval():
    cal = SessionCalendar.named("continuous")
    t = dt.datetime(2024, 6, 22, 23, 58)  # Saturday night
    assert cal.next_times(t, dt.timedelta(minutes=1), 3) == [t + dt.timedelta(minutes=k) for k in (1, 2, 3)]
    assert cal.next_times(t, FIVE, 0) == []


def test_bad_interval():
    with pytest.raises(ValueError):
        SessionCalendar.named("ashare").next_times(dt.datetime(2024, 6, 18, 10), dt.timedelta(hours=3), 1)
    with pytest.raises(ValueError):
        SessionCalendar.named("continuous").next_times(dt.datetime(2024, 6, 18, 10), dt.timedelta(0), 1)


def test_bad_name_says_how_to_list_valid_ones():
    with pytest.raises(ValueError, match="unknown session calendar 'nyse_x'.*continuous, ashare, us.*"
                                         "`kronos-rt calendars` lists the valid codes"):
        SessionCalendar.named("nyse_x")
    with pytest.raises(ValueError, match="kronos-rt calendars"):
        parse_session_map("*.SH=ashare,AAPL=nasdaq_x")


def test_session_map_first_match_wins():
    lookup = parse_session_map("*.SH=ashare, *.SZ=XSHE, *.HK=XHKG, AAPL=us, A*=continuous, *=XNYS")
    assert lookup("600000.SH").name == "XSHG"   # ashare is XSHG
    assert lookup("000001.SZ").name == "XSHG"   # Shenzhen keeps Shanghai's calendar
    assert lookup("0700.HK").name == "XHKG"
    assert lookup("AAPL").name == "XNYS"        # us is XNYS
    assert lookup("AMZN").name == "continuous"
    assert lookup("MSFT").name == "XNYS"
    assert lookup("600000.sh").name == "XNYS"  # patterns are case-sensitive
    assert lookup("600000.SH") is lookup("000001.SZ")  # one calendar per code, built once


def test_session_map_defaults():
    assert parse_session_map("continuous")("600000.SH").name == "continuous"
    assert parse_session_map("ashare")("anything").name == "XSHG"
    assert parse_session_map("")("x").name == "continuous"
    assert parse_session_map("*.SH=ashare")("BTC-USD").name == "continuous"
    with pytest.raises(ValueError):
        parse_session_map("=ashare")


def test_symbol_map_is_one_rule_set_for_calendars_and_calibration_pools():
    from worker.calendars.sessions import calibration_groups, symbol_map

    names = []

    def value_of(name):
        names.append(name)
        return name.upper()

    lookup = symbol_map(" *.SH = a , AAPL=b,, A*=c", value_of, "none")
    assert names == ["a", "b", "c"]  # each NAME resolved once, when the spec is read
    assert [lookup(s) for s in ("600000.SH", "AAPL", "AMZN", "MSFT", "600000.sh")] == ["A", "B", "C", "none", "none"]
    assert symbol_map("pool", str, "all")("anything") == "pool"  # a bare NAME means *=NAME
    with pytest.raises(ValueError, match="empty symbol pattern in session map entry '=x'"):
        symbol_map("=x", str, "all")
    with pytest.raises(ValueError, match="empty symbol pattern in calibration group entry '=x'"):
        calibration_groups("*.SH=sh,=x")
    assert calibration_groups("*.SH=sh")("AAPL") == "all"  # matches nothing: the default pool


def test_symbol_map_answers_from_its_cache(monkeypatch):
    import fnmatch

    from worker.calendars import sessions

    lookup = parse_session_map("*.SH=ashare")
    calls = []
    real = fnmatch.fnmatchcase
    monkeypatch.setattr(sessions.fnmatch, "fnmatchcase", lambda s, p: calls.append(s) or real(s, p))
    assert lookup("600000.SH").name == lookup("600000.SH").name == "XSHG"
    assert lookup("BTC-USD").name == lookup("BTC-USD").name == "continuous"
    assert calls == ["600000.SH", "BTC-USD"]  # matched once per symbol, then cached

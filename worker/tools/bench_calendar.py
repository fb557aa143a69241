"""Horizon stamps per forecast: the exchange calendar's session table against the weekday rule.

    python -m worker.tools.bench_calendar [--code XSHG] [--forecasts 5000] [--steps 12] [--repeats 5]

Times, in one run, the next `--steps` bar times after each of `--forecasts` bar times:
- the weekday rule (worker/sessions.SessionCalendar: the exchange's regular session times on
  weekdays, no holidays: what --sessions ashare did before exchange calendars),
- the session table (worker/sessions.ExchangeSessions: holidays, early closes, breaks),
- exchange_calendars asked directly per forecast (its trading_index over the next days, in
  pandas; on a subset, scaled), to show what the table saves.
Two sets of bar times: the bundled A-share tape (2024-06-18..08-29, no holiday in it) and
every 5-minute bar of the calendar's 2024 sessions, strided to `--forecasts` (holidays and
their eves included). Prints a Markdown table: build time once, microseconds per forecast,
the ratio to the weekday rule and how many horizons differ from the weekday rule's.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import time

import pandas as pd

from worker.tools import TAPE
from worker.tools.tables import format_table

FIVE = _dt.timedelta(minutes=5)


def _time_per_forecast(fn, lasts, steps, repeats) -> tuple[float, list]:
    """Median over repeats of the seconds per forecast; the horizons of the last repeat."""
    runs, out = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = [fn(t, FIVE, steps) for t in lasts]
        runs.append((time.perf_counter() - t0) / len(lasts))
    return statistics.median(runs), out


def bar_time_sets(code: str, n: int) -> dict[str, list[_dt.datetime]]:
    from worker.calendars.sessions import calendar

    tape = [t.to_pydatetime() for t in pd.read_csv(TAPE, usecols=["timestamps"], parse_dates=["timestamps"])["timestamps"]]
    year = [_dt.datetime(2024, 1, 2, 9, 30)]
    year += calendar(code).next_times(year[0], FIVE, 48 * 260)
    year = [t for t in year if t.year == 2024]
    stride = max(1, len(year) // n)
    return {"bundled tape (no holiday)": (tape * (n // len(tape) + 1))[:n], "2024, every session": year[::stride][:n]}


def library_next_times(lib, tz):
    """The obvious per-forecast use of exchange_calendars: its trading index over the next days."""
    def next_times(last: _dt.datetime, interval: _dt.timedelta, n: int) -> list[_dt.datetime]:
        days = 20
        idx = lib.trading_index(last.date(), min(last.date() + _dt.timedelta(days=days), lib.last_session.date()),
                                f"{int(interval.total_seconds() // 60)}min", intervals=False, closed="right",
                                force=True).tz_convert(tz).tz_localize(None)
        return [t.to_pydatetime() for t in idx[idx > pd.Timestamp(last)][:n]]
    return next_times


def run(code: str = "XSHG", forecasts: int = 5000, steps: int = 12, repeats: int = 5, library_subset: int = 200) -> str:
    import warnings

    import exchange_calendars as xc

    from worker.calendars.sessions import SessionCalendar, calendar

    t0 = time.perf_counter()
    cal = calendar(code)
    build_s = time.perf_counter() - t0
    rule = SessionCalendar(f"{code} weekday rule", cal.sessions, cal.table.weekdays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = xc.get_calendar(code)
    rows = []
    for name, lasts in bar_time_sets(code, forecasts).items():
        rule_s, rule_out = _time_per_forecast(rule.next_times, lasts, steps, repeats)
        table_s, table_out = _time_per_forecast(cal.next_times, lasts, steps, repeats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sub = lasts[:: max(1, len(lasts) // library_subset)][:library_subset]
            lib_s, lib_out = _time_per_forecast(library_next_times(lib, cal.table.tz), sub, steps, 1)
        agree = sum(a == b for a, b in zip(lib_out, [cal.next_times(t, FIVE, steps) for t in sub]))
        differ = sum(a != b for a, b in zip(rule_out, table_out))
        rows.append([name, f"{len(lasts)} x {steps}", f"{rule_s * 1e6:.1f}", f"{table_s * 1e6:.1f}",
                     f"{table_s / rule_s:.2f}", f"{lib_s * 1e6:,.0f} ({len(sub)} forecasts)",
                     f"{lib_s / table_s:,.0f}x", f"{agree}/{len(sub)}", f"{differ}"])
    head = (f"Calendar {code}: exchange_calendars {xc.__version__}, built once into a session table in "
            f"{build_s:.2f} s ({len(cal.table.days)} sessions, {cal.span[0]}..{cal.span[1]}). Median of "
            f"{repeats} runs.\n\n")
    return head + format_table(
        ["bar times", "forecasts x steps", "weekday rule µs/forecast", "session table µs/forecast",
         "table / weekday rule", "library per forecast µs", "library / table", "table = library",
         "horizons unlike the weekday rule's"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", default="XSHG")
    p.add_argument("--forecasts", type=int, default=5000)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(run(args.code, args.forecasts, args.steps, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

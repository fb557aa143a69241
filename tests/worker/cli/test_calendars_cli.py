"""`kronos-rt calendars`: codes, aliases, zones and a date's sessions (worker/cli/calendars.py)."""
from worker.cli import main


def test_lists_sessions_of_a_date_with_breaks_early_closes_and_holidays(capsys):
    assert main(["calendars", "XSHG", "XHKG", "us", "--date", "2024-12-24"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "2024-12-24 (Tuesday)" in out
    assert "Asia/Shanghai" in rows["XSHG"] and "09:30-11:30 13:00-15:00" in rows["XSHG"]
    assert "ashare" in rows["XSHG"] and "XSHE" in rows["XSHG"]
    assert "09:30-12:00 " in rows["XHKG"] + " " and "13:00" not in rows["XHKG"].split("Asia/Hong_Kong")[1]
    assert "America/New_York" in rows["XNYS"] and "09:30-13:00" in rows["XNYS"]  # early close
    assert main(["calendars", "XSHG", "--date", "2024-02-09"]) == 0
    assert "closed" in capsys.readouterr().out.splitlines()[-1]


def test_past_the_table_says_weekday_rule(capsys):
    assert main(["calendars", "XNYS", "--date", "2024-06-03", "--calendar-range", "2023-01-01:2023-12-31"]) == 0
    assert "09:30-16:00 (weekday rule: past the table)" in capsys.readouterr().out

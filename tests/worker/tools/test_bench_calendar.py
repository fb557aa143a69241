"""worker/tools/bench_calendar.py: the table prints, and the session table agrees with the
library asked directly on every sampled forecast (holiday eves included)."""
from worker.tools.bench_calendar import run


def test_bench_table_and_agreement_with_the_library():
    out = run("XSHG", forecasts=300, steps=12, repeats=1, library_subset=30)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "forecasts x steps" not in line]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "300 x 12"
        assert float(cells[2]) > 0 and float(cells[3]) > 0
        assert cells[7] == "30/30"  # table = library on every sampled forecast
    # The bundled tape has no holiday: the weekday rule agrees there; over 2024 it does not.
    assert [c.strip() for c in rows[0].strip("|").split("|")][8] == "0"
    assert int([c.strip() for c in rows[1].strip("|").split("|")][8]) > 0

"""The fault suite's summary table: each scenario adds a row (tests/worker/faults/report.py),
printed at the end of the run and written to $KRONOS_RT_FAULTS_TABLE when that is set."""
from __future__ import annotations

import os

from tests.worker.faults.report import ROWS, table


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    text = table(ROWS)
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(text)
    out = os.environ.get("KRONOS_RT_FAULTS_TABLE")
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")

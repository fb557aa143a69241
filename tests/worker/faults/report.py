"""Figures of one fault scenario: which bars were owed a forecast, which got one, how often."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
import asyncio
import time

ROWS: list["Row"] = []


@dataclass
class Row:
    scenario: str
    bars: int          # bar messages sent
    eligible: int      # bars owed a forecast (min-history reached)
    lost: int          # eligible bars without a forecast
    duplicates: int    # extra copies (re-reads after the fault)
    identical: bool    # every extra copy bit-identical to the first
    recovery_s: float  # fault over (or worker replaced) -> last owed forecast published
    note: str = ""


def tally(scenario: str, bars: int, want: set, msgs, recovery_s: float, note: str = "") -> Row:
    """Compare forecast messages with the (symbol, as_of) set owed; add the row to the table."""
    by_bar = defaultdict(list)
    for m in msgs:
        doc = json.loads(m.value)
        by_bar[(doc["symbol"], doc["as_of"])].append(doc)
    unexpected = set(by_bar) - want
    assert not unexpected, f"forecasts for bars not owed one: {sorted(unexpected)[:5]}"
    dups = sum(len(v) - 1 for v in by_bar.values())
    # Greedy decoding: a bar forecast twice must get the very same numbers (the whole
    # horizon: times, means and quantiles), whichever worker made them.
    identical = all(c["horizon"] == v[0]["horizon"] for v in by_bar.values() for c in v[1:])
    row = Row(scenario, bars, len(want), len(want - set(by_bar)), dups, identical, recovery_s, note)
    ROWS.append(row)
    return row


def table(rows: list[Row]) -> str:
    head = ("scenario", "bars", "owed", "lost", "duplicates", "identical", "recovery s", "")
    lines = [head] + [(r.scenario, str(r.bars), str(r.eligible), str(r.lost), str(r.duplicates),
                       "yes" if r.identical else "NO", f"{r.recovery_s:.1f}", r.note) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def readyz(port: int) -> tuple[int, dict]:
    """(status, checks) of a worker's /readyz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def covered(msgs) -> set:
    return {(d["symbol"], d["as_of"]) for d in (json.loads(m.value) for m in msgs)}


async def until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)

"""End to end on the eve of a holiday (broker + Redis + worker, parity checkpoint, greedy): an
A-share tape whose bars end Thu 2024-02-08 15:00, the last session before the Spring
Festival, then the first bars after it (Mon 2024-02-19). Every forecast's horizon is stamped
by XSHG's calendar (no bar on the closed days), its values are what the offline predictor
gives for those very stamps (not for the weekday rule's), and the scores meet the realized
bars after the holiday."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from tests.worker.streams import (
    COLUMNS, LOOKBACK, MIN_HISTORY, PRED_LEN, TAPE, Offline, consume, forecasts_of, make_settings, names,
    one_torch_thread, running_worker,
)
from tests.worker.quality.scores import hand_scores
from worker.adapters.kafka import ensure_topics
from worker.calendars.sessions import SessionCalendar, calendar
from worker.tools.replay import prepare, replay

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too

SYMBOL = "600000.SH"
FIVE = dt.timedelta(minutes=5)
EVE = dt.datetime(2024, 2, 8, 15, 0)
REOPEN = dt.datetime(2024, 2, 19, 9, 35)


def holiday_eve_tape() -> pd.DataFrame:
    """The real tape's first 46 bars, restamped: 40 on 2024-02-08 (10:15 .. 15:00), 6 on 02-19."""
    rows = prepare(TAPE, SYMBOL, limit=46).reset_index(drop=True)
    first = dt.datetime(2024, 2, 8, 10, 15)
    times = [first] + calendar("XSHG").next_times(first, FIVE, len(rows) - 1)
    assert times[39] == EVE and times[40] == REOPEN
    rows["time"] = pd.to_datetime(times)
    return rows


def ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S")


async def test_holiday_eve_forecasts_are_stamped_valued_and_scored_by_the_exchange_calendar(
        broker, redis_url, redis_prefix):
    topics = names("holiday")
    scores_topic = topics["forecasts_topic"] + ".scores"
    await ensure_topics(broker, {topics["bars_topic"]: 1})
    rows = holiday_eve_tape()
    settings = make_settings(broker, redis_url, redis_prefix, topics, sessions="*.SH=XSHG", scores_topic=scores_topic)
    n_forecasts = len(rows) - MIN_HISTORY + 1
    async with running_worker(settings):
        await replay(rows, broker, topics["bars_topic"])
        fcs = forecasts_of(await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= n_forecasts))
        want_scores = hand_scores(fcs, rows)
        scores = [json.loads(m.value) for m in
                  await consume(broker, scores_topic, lambda got: len(got) >= len(want_scores))]
        await asyncio.sleep(0.3)

    assert len(fcs) == n_forecasts
    xshg = calendar("XSHG")
    for f in fcs:
        stamps = [h["ts"] for h in f["horizon"]]
        assert stamps == [ts(t) for t in xshg.next_times(pd.Timestamp(f["as_of"]).to_pydatetime(), FIVE, PRED_LEN)]
        assert not any("2024-02-09" <= s < "2024-02-19" for s in stamps)  # the exchange is closed
    eve = next(f for f in fcs if f["as_of"] == ts(EVE))
    assert [h["ts"] for h in eve["horizon"]] == [ts(REOPEN + k * FIVE) for k in range(PRED_LEN)]

    # The values are the model's for those stamps: the offline predictor handed the same
    # window and the calendar's stamps gives them ...
    offline = Offline(rows)
    for f in fcs:
        offline.check(f)
    # ... and they are not what the model says for the weekday rule's stamps (Fri 02-09):
    # Kronos reads each future bar's minute, hour, weekday, day and month.
    weekday_rule = SessionCalendar("weekdays", xshg.sessions, xshg.table.weekdays)
    wrong = weekday_rule.next_times(EVE, FIVE, PRED_LEN)
    assert wrong[0] == dt.datetime(2024, 2, 9, 9, 35)
    window = rows.iloc[max(0, 40 - LOOKBACK):40]
    wrong_values = offline.predictor.predict(window[COLUMNS], window["time"].reset_index(drop=True),
                                             pd.Series(pd.to_datetime(wrong)), PRED_LEN, T=1.0, top_k=1, top_p=1.0,
                                             sample_count=1, verbose=False)[COLUMNS].to_numpy()
    got = np.array([[h[c] for c in COLUMNS] for h in eve["horizon"]])
    assert not np.allclose(got, wrong_values, rtol=1e-4, atol=1e-4)

    # Scoring follows the calendar: each step meets the realized bar stamped for it, across
    # the holiday (the eve's forecast is scored on 02-19's bars), each once.
    new = [s for s in scores if s["kind"] == "new"]
    assert Counter((s["symbol"], s["as_of"], s["step"]) for s in new) == Counter(want_scores.keys())
    eve_scores = sorted((s["step"], s["ts"]) for s in new if s["as_of"] == ts(EVE))
    assert eve_scores == [(k + 1, ts(REOPEN + k * FIVE)) for k in range(PRED_LEN)]
    assert not any("2024-02-09" <= s["ts"] < "2024-02-19" for s in new)

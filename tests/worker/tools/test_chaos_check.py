"""The chaos drill's independent checker (worker/tools/chaos.py) on hand-made topics: what
counts as lost, dead-lettered, duplicated, unexpected, and how the output gap is measured."""
import datetime as dt
import json
from types import SimpleNamespace

from worker.contracts import events
from worker.tools.chaos import Fault, check, output_gaps

T0 = dt.datetime(2024, 6, 18, 9, 35)
MIN_HISTORY = 3


def bar(i, offset, symbol="AAA", partition=0):
    t = T0 + dt.timedelta(minutes=5 * i)
    doc = {"symbol": symbol, "ts": t.isoformat(), "open": 1.0, "high": 1.0 + i, "low": 1.0, "close": 1.0 + i}
    return SimpleNamespace(partition=partition, offset=offset, key=symbol.encode(), value=events.dumps(doc))


def forecast(i, symbol="AAA", close=2.0, ts_ms=0, partition=0):
    t = (T0 + dt.timedelta(minutes=5 * i)).strftime("%Y-%m-%dT%H:%M:%S")
    doc = {"symbol": symbol, "as_of": t, "horizon": [{"ts": t, "open": 1.0, "high": 1.0, "low": 1.0,
                                                      "close": close, "volume": 0.0, "amount": 0.0}],
           "source": {"partition": partition, "offset": i}}
    return SimpleNamespace(value=json.dumps(doc).encode(), timestamp=ts_ms)


def dlq(partition, offset):
    return SimpleNamespace(headers=[("source.partition", str(partition).encode()),
                                    ("source.offset", str(offset).encode())])


BARS = [bar(i, i) for i in range(6)]  # bars 2..5 are owed a forecast (min history 3)


def test_every_owed_bar_forecast_once_is_ok():
    f = check(BARS, [forecast(i) for i in range(2, 6)], [], min_history=MIN_HISTORY, lookback=4)
    assert (f.eligible, f.forecast, f.lost, f.duplicates) == (4, 4, [], 0) and f.ok


def test_a_missing_forecast_is_lost_unless_dead_lettered():
    f = check(BARS, [forecast(i) for i in (2, 3)], [dlq(0, 5)], min_history=MIN_HISTORY, lookback=4)
    assert f.lost == [("AAA", "2024-06-18T09:55:00", 0, 4)]
    assert f.dead_lettered == 1 and not f.ok


def test_duplicates_must_be_identical_and_forecasts_owed():
    fcs = [forecast(i) for i in range(2, 6)] + [forecast(3), forecast(4, close=9.0), forecast(1)]
    f = check(BARS, fcs, [], min_history=MIN_HISTORY, lookback=4)
    assert f.duplicates == 2
    assert f.not_identical == [("AAA", "2024-06-18T09:55:00")]
    assert f.unexpected == [("AAA", "2024-06-18T09:40:00")]
    assert not f.ok


def test_the_reference_sees_each_forecasts_own_window():
    seen = []

    def reference(items):
        seen.extend(len(it.values) for it in items)
        return [(SimpleNamespace(mean=[[1.0, 1.0, 1.0, 2.0, 0.0, 0.0]], quantiles={}), None) for _ in items]

    f = check(BARS, [forecast(i) for i in range(2, 6)], [], min_history=MIN_HISTORY, lookback=4, reference=reference)
    assert sorted(seen) == [3, 4, 4, 4]  # bar 2's window holds 3 bars, later ones the lookback
    assert f.exact == 4 and f.differ == []


def test_the_output_gap_is_the_longest_pause_of_one_partition_around_the_fault():
    fcs = [forecast(2, ts_ms=1000), forecast(3, ts_ms=1500), forecast(4, ts_ms=9500),  # partition 0: 8 s pause
           forecast(2, "BBB", ts_ms=1000, partition=1), forecast(3, "BBB", ts_ms=2000, partition=1)]
    [(_, gap)] = output_gaps(fcs, [Fault(1.0, "freeze", 0, 4.5)], t0=0.0)
    assert gap == 8.0


def test_a_lost_bar_after_its_partitions_last_forecast_is_counted_as_never_reached():
    hole = check(BARS, [forecast(i) for i in (2, 4, 5)], [], min_history=MIN_HISTORY, lookback=4)
    assert [x[3] for x in hole.lost] == [3] and hole.unread_tail == 0  # skipped: a later bar was forecast
    tail = check(BARS, [forecast(2)], [], min_history=MIN_HISTORY, lookback=4)
    assert [x[3] for x in tail.lost] == [3, 4, 5] and tail.unread_tail == 3  # the partition stopped at 2
    assert "3 of them after their partition's last forecast" in tail.lines()[0] and not tail.ok


def test_a_partition_that_never_caught_up_pauses_until_the_drill_stopped_waiting():
    fcs = [forecast(2, ts_ms=1000), forecast(3, ts_ms=1500),  # partition 0 stops at bar 3
           forecast(2, "BBB", ts_ms=1000, partition=1), forecast(3, "BBB", ts_ms=2000, partition=1)]
    fault = Fault(1.0, "kill9", 0)
    [(_, made)] = output_gaps(fcs, [fault], t0=0.0)
    assert made == 1.0  # between the forecasts that were made: partition 1's second
    [(_, owed)] = output_gaps(fcs, [fault], t0=0.0, until=60.0, unfinished=[0])
    assert owed == 58.5  # partition 0 from its last forecast (1.5 s) to the end of the wait
    f = check(BARS, [forecast(2), forecast(3)], [], min_history=MIN_HISTORY, lookback=4)
    assert f.unfinished == [0]

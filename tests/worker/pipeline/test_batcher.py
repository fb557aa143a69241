import asyncio
import threading
import time

import pytest

from worker.pipeline.batcher import MicroBatcher, QueueFull


class Recorder:
    def __init__(self):
        self.batches = []

    async def __call__(self, batch):
        self.batches.append(batch)


def doubling(items):
    return [2 * x for x in items]


async def test_burst_is_cut_at_max_batch_and_keeps_order():
    rec = Recorder()
    b = MicroBatcher(doubling, rec, max_batch=4, max_wait_s=0.05)
    b.start()
    for i in range(10):
        b.submit(i)
    assert await b.drain(timeout=5)
    await b.close()
    sizes = [len(x.items) for x in rec.batches]
    assert sizes == [4, 4, 2]
    assert [r for x in rec.batches for r in x.results] == [2 * i for i in range(10)]
    for x in rec.batches:
        assert all(t <= x.started <= x.finished for t in x.enqueued)


async def test_lone_item_waits_at_most_max_wait():
    rec = Recorder()
    b = MicroBatcher(doubling, rec, max_batch=64, max_wait_s=0.03)
    b.start()
    t0 = time.time()
    b.submit(1)
    assert await b.drain(timeout=5)
    await b.close()
    waited = rec.batches[0].started - t0
    assert 0.02 <= waited < 0.5
    assert rec.batches[0].results == [2]


async def test_items_arriving_within_the_wait_join_the_first_batch():
    rec = Recorder()
    b = MicroBatcher(doubling, rec, max_batch=64, max_wait_s=0.2)
    b.start()
    b.submit(1)
    await asyncio.sleep(0.02)
    b.submit(2)
    assert await b.drain(timeout=5)
    await b.close()
    assert [x.items for x in rec.batches] == [[1, 2]]


async def test_compute_runs_on_one_thread_off_the_event_loop():
    threads = set()
    loop_thread = threading.get_ident()

    def compute(items):
        threads.add(threading.get_ident())
        time.sleep(0.01)
        return items

    rec = Recorder()
    b = MicroBatcher(compute, rec, max_batch=2, max_wait_s=0.0)
    b.start()
    ticks = 0
    for i in range(8):
        b.submit(i)
    # The loop stays responsive while batches compute.
    while b.pending:
        ticks += 1
        await asyncio.sleep(0.001)
    assert await b.drain(timeout=5)
    await b.close()
    assert len(threads) == 1 and loop_thread not in threads
    assert ticks > 5


async def test_items_piling_up_during_compute_form_the_next_batch():
    started = threading.Event()
    release = threading.Event()

    def compute(items):
        started.set()
        release.wait(5)
        return items

    rec = Recorder()
    b = MicroBatcher(compute, rec, max_batch=8, max_wait_s=0.0)
    b.start()
    b.submit("a")
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    for x in "bcd":
        b.submit(x)
    assert b.pending == 4
    release.set()
    assert await b.drain(timeout=5)
    await b.close()
    assert [x.items for x in rec.batches] == [["a"], ["b", "c", "d"]]


async def test_failing_item_is_isolated_from_its_batch():
    def compute(items):
        if "bad" in items:
            raise ValueError("boom")
        return [x.upper() for x in items]

    rec = Recorder()
    b = MicroBatcher(compute, rec, max_batch=8, max_wait_s=0.01)
    b.start()
    for x in ("a", "bad", "c"):
        b.submit(x)
    assert await b.drain(timeout=5)
    await b.close()
    outcome = {x.items[0]: (x.results, x.error) for x in rec.batches}
    assert outcome["a"] == (["A"], None)
    assert outcome["c"] == (["C"], None)
    assert outcome["bad"][0] is None and isinstance(outcome["bad"][1], ValueError)


async def test_drain_times_out_while_compute_is_stuck():
    release = threading.Event()

    def compute(items):
        release.wait(5)
        return items

    b = MicroBatcher(compute, Recorder(), max_batch=1, max_wait_s=0.0)
    b.start()
    b.submit(1)
    assert not await b.drain(timeout=0.05)
    release.set()
    assert await b.drain(timeout=5)
    await b.close()
    with pytest.raises(RuntimeError):
        b.submit(2)


# -- the lower-priority lane (HTTP requests sharing the stream's engine)

def _gated():
    """compute() that blocks until released, recording each batch it is given."""
    started, release, seen = threading.Event(), threading.Event(), []

    def compute(items):
        seen.append(list(items))
        started.set()
        release.wait(5)
        return [x * 10 for x in items]
    return compute, started, release, seen


async def test_low_priority_items_wait_behind_stream_items_and_never_share_their_batch():
    compute, started, release, seen = _gated()
    rec = Recorder()
    b = MicroBatcher(compute, rec, max_batch=8, max_wait_s=0.0)
    b.start()
    b.submit(1)  # occupies the thread while the rest piles up
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    lows = [b.submit_low(100 + i) for i in range(3)]
    for x in (2, 3):
        b.submit(x)
    assert b.low_queued == 3 and b.pending == 3
    release.set()
    got = await asyncio.gather(*lows)
    assert await b.drain(timeout=5)
    await b.close()
    assert seen == [[1], [2, 3], [100, 101, 102]]
    assert [r for r, _ in got] == [1000, 1010, 1020]
    assert all(batch.items == [100, 101, 102] for _, batch in got)
    assert [x.items for x in rec.batches] == [[1], [2, 3]]  # handle() sees stream batches only


async def test_stream_item_arriving_while_a_low_batch_gathers_goes_first():
    seen = []

    def compute(items):
        seen.append(list(items))
        return items

    b = MicroBatcher(compute, Recorder(), max_batch=8, max_wait_s=0.1)
    b.start()
    low = b.submit_low("http")
    await asyncio.sleep(0.02)  # the low batch is waiting for company
    b.submit("bar")
    await low
    assert await b.drain(timeout=5)
    await b.close()
    assert seen == [["bar"], ["http"]]


async def test_low_lane_bound_and_cancelled_items_free_their_slot_and_are_skipped():
    compute, started, release, seen = _gated()
    b = MicroBatcher(compute, Recorder(), max_batch=8, max_wait_s=0.0, low_max_queue=2)
    b.start()
    b.submit(1)
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    keep, gone = b.submit_low(5), b.submit_low(6)
    with pytest.raises(QueueFull):
        b.submit_low(7)
    gone.cancel()
    await asyncio.sleep(0)
    assert b.low_queued == 1  # the cancelled request left the queue at once
    again = b.submit_low(8)
    release.set()
    assert [(await keep)[0], (await again)[0]] == [50, 80]
    assert await b.drain(timeout=5)
    await b.close()
    assert [6] not in seen and all(6 not in batch for batch in seen)


async def test_low_priority_failure_reaches_only_its_future_and_close_fails_the_rest():
    def compute(items):
        if "bad" in items:
            raise ValueError("boom")
        return items

    batches = []
    b = MicroBatcher(compute, Recorder(), max_batch=8, max_wait_s=0.01)
    b.on_low_batch = batches.append
    b.start()
    ok, bad = b.submit_low("ok"), b.submit_low("bad")
    assert (await ok)[0] == "ok"
    with pytest.raises(ValueError, match="boom"):
        await bad
    assert sorted(len(x.items) for x in batches) == [1, 1]  # retried alone after the shared failure
    release = threading.Event()
    b2 = MicroBatcher(lambda items: release.wait(5) and items, Recorder(), max_batch=1, max_wait_s=0.0)
    b2.start()
    first, waiting = b2.submit_low(1), b2.submit_low(2)
    await asyncio.sleep(0.02)
    threading.Timer(0.05, release.set).start()  # close() joins the inference thread
    await b2.close()
    for fut in (first, waiting):
        with pytest.raises(RuntimeError, match="closed"):
            await fut
    await b.close()


async def test_low_lane_keeps_gathering_while_requests_keep_arriving_and_cuts_when_quiet():
    seen = []
    b = MicroBatcher(lambda items: seen.append(list(items)) or list(items), Recorder(), max_batch=64,
                     max_wait_s=0.02, low_max_gather_s=5)
    b.start()
    futs = []
    for i in range(8):  # 8 x 10 ms: well past max_wait after the first, never quiet for it
        futs.append(b.submit_low(i))
        await asyncio.sleep(0.01)
    with b.arriving():  # a request still being parsed holds the batch open past max_wait
        await asyncio.sleep(0.06)
        futs.append(b.submit_low(8))
    await asyncio.gather(*futs)
    lone = b.submit_low(9)  # then nothing more: cut max_wait after it
    t0 = time.monotonic()
    await lone
    waited = time.monotonic() - t0
    await b.close()
    assert seen == [list(range(9)), [9]]
    assert waited < 1.0  # not the 5 s cap


async def test_low_lane_gathering_has_a_hard_cap():
    seen = []
    b = MicroBatcher(lambda items: seen.append(len(items)) or list(items), Recorder(), max_batch=64,
                     max_wait_s=0.02, low_max_gather_s=0.1)
    b.start()
    with b.arriving():  # e.g. a slow upload that never finishes in time
        first = b.submit_low(1)
        t0 = time.monotonic()
        await first
        waited = time.monotonic() - t0
    await b.close()
    assert seen == [1] and 0.09 <= waited < 2.0


async def test_low_cohort_that_piled_up_waits_for_the_one_being_answered_and_they_merge():
    gate = threading.Event()
    seen = []

    def compute(items):
        if items[0] == "a0":
            gate.wait(5)
        seen.append(list(items))
        return list(items)

    b = MicroBatcher(compute, Recorder(), max_batch=64, max_wait_s=0.02, low_max_gather_s=5)
    b.start()
    first = [b.submit_low(f"a{i}") for i in range(2)]
    await asyncio.sleep(0.05)  # cohort a computing; cohort b piles up behind it
    second = [b.submit_low(f"b{i}") for i in range(2)]
    gate.set()
    await asyncio.gather(*first)
    for i in range(2):  # a's clients come back while their answers still go out
        b.low_answered()
        await asyncio.sleep(0.01)
        second.append(b.submit_low(f"a{i}'"))
    await asyncio.gather(*second)
    await b.close()
    assert seen == [["a0", "a1"], ["b0", "b1", "a0'", "a1'"]]


async def test_stream_batch_keeps_gathering_while_the_feeder_has_more():
    """A burst read in chunks: while the feeder says more is coming, the batch is not cut at
    max_wait but at max_batch (or when the feeder has nothing left)."""
    rec = Recorder()
    b = MicroBatcher(doubling, rec, max_batch=8, max_wait_s=0.01, stream_max_gather_s=5.0)
    b.start()
    b.feeding(True)
    for chunk in range(3):  # 3 + 3 + 3 items, each chunk well after max_wait
        for i in range(3):
            b.submit(3 * chunk + i)
        await asyncio.sleep(0.05)
    b.feeding(False)
    assert await b.drain(timeout=5)
    await b.close()
    assert [len(x.items) for x in rec.batches] == [8, 1]
    assert [r for x in rec.batches for r in x.results] == [2 * i for i in range(9)]


async def test_stream_batch_is_cut_when_the_feeder_runs_dry_or_at_the_hard_cap():
    rec = Recorder()
    b = MicroBatcher(doubling, rec, max_batch=64, max_wait_s=0.01, stream_max_gather_s=0.3)
    b.start()
    b.feeding(True)
    b.submit(1)
    await asyncio.sleep(0.1)
    assert rec.batches == []  # past max_wait, still gathering
    b.feeding(False)
    await asyncio.sleep(0.05)
    assert [x.items for x in rec.batches] == [[1]]  # cut as soon as nothing more is coming
    t0 = time.time()
    b.feeding(True)  # the feeder says more, but nothing comes: the hard cap cuts it
    b.submit(2)
    assert await b.drain(timeout=5)
    await b.close()
    assert [x.items for x in rec.batches] == [[1], [2]]
    assert 0.25 <= rec.batches[1].started - t0 < 2.0


async def test_next_batch_computes_while_the_previous_one_is_handled_and_handling_keeps_order():
    """handle() of batch k runs while batch k+1 computes; handlers still finish in batch order,
    and pending/drain count an item until its handler is done."""
    started = []
    release = asyncio.Event()

    def compute(items):
        started.append(list(items))
        return doubling(items)

    handled = []

    async def handle(batch):
        if batch.items[0] == 0:
            await release.wait()  # the first batch's forecasts take long to go out
        handled.append(batch.items)

    b = MicroBatcher(compute, handle, max_batch=2, max_wait_s=0.01)
    b.start()
    for i in range(4):
        b.submit(i)
    async with asyncio.timeout(5):
        while len(started) < 2:
            await asyncio.sleep(0.005)
    assert started == [[0, 1], [2, 3]] and handled == []  # the second computed before the first was handled
    await asyncio.sleep(0.05)
    assert handled == [] and b.pending == 4 and not await b.drain(timeout=0.05)  # the second waits its turn
    release.set()
    assert await b.drain(timeout=5)
    assert handled == [[0, 1], [2, 3]] and b.pending == 0
    await b.close()


async def test_close_cancels_handlers_of_batches_not_handled_yet():
    never = asyncio.Event()
    handled = []

    async def handle(batch):
        await never.wait()
        handled.append(batch.items)

    b = MicroBatcher(doubling, handle, max_batch=1, max_wait_s=0.001)
    b.start()
    for i in range(3):
        b.submit(i)
    async with asyncio.timeout(5):
        while b.queued:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # all three computed; their handlers wait
    await asyncio.wait_for(b.close(), 5)
    assert handled == []

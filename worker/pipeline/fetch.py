"""The fetch loop: bars from the consumer, through ingest, to the micro-batcher or the DLQ.

Per fetch: partitions seen for the first time since assignment are checked for lost
windows (worker/pipeline/recovery.py), the fetch is parsed with its upserts pipelined
(Ingest.parse_fetch), then each message is handled in offset order, after the flow
controls let it (worker/pipeline/flow.py: backpressure, run-ahead).

When Redis or the broker fails (worker/pipeline/poison.py tells which kind):
- an outage is waited out, every partition paused; what of the fetch was not handled yet
  is parsed and handled again (a repeated upsert is a redelivery: forecast again);
- a reply error is retried with a growing pause, the rest of the fetch parsed one message
  at a time (no pipelined upserts); after poison.REPLY_RETRIES failures in a row a message
  goes to the DLQ (`infrastructure_error`) and the partition moves on. An error with no
  message to blame (a fetch, a rebuild) is retried, pausing at most 5 s, for as long as it
  lasts; after REPLY_RETRIES failures in a row /readyz says so ("fetching": false) until
  the loop goes on.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

from worker.contracts import events
from worker.pipeline import poison
from worker.pipeline.ingest import DeadLetter
from worker.pipeline.partition import PartitionState

log = logging.getLogger("kronos_rt.worker")

# Longest the fetch loop handles bars without letting the event loop's other tasks run.
YIELD_EVERY_S = 0.002


class FetchLoop:
    def __init__(self, parts, states: dict, settings, stopping: Callable[[], bool],
                 woke: Callable[[], bool] = lambda: False):
        self.p = parts        # worker.app.assembly.Parts
        self.states = states  # TopicPartition -> PartitionState, owned ones (worker/pipeline/ownership.py)
        self.s = settings
        self.stopping = stopping
        # True once after the worker stood still past its session (worker/pipeline/freeze.py): every
        # partition was dropped, so what is left of the fetch is another owner's.
        self.woke = woke
        self.bars = 0         # messages handled
        # Messages per fetch (and per pipelined upsert round trip): a full batch at least.
        self.max_records = max(500, settings.max_batch)

    def owned(self) -> list[PartitionState]:
        return list(self.states.values())

    async def run(self) -> None:
        p = self.p
        todo: collections.deque = collections.deque()  # (tp, state, msg) of the fetch not handled yet
        parsed = None
        failures = 0  # reply errors in a row
        careful = False  # after a reply error: the rest of the fetch is parsed one message at a time
        while not self.stopping():
            blame = None  # the message a reply error is charged to
            try:
                if p.recovery.lost:
                    p.batcher.feeding(False)  # a rebuild takes a while: what is gathered goes now
                    await p.recovery.rebuild_all(self.owned())
                if not todo:
                    # What the consumer already holds first: while a burst is still coming in, the
                    # batcher keeps gathering (MicroBatcher.feeding); only when nothing is left
                    # does the loop wait on the broker, and the batcher cuts what it has.
                    batch = await p.consumer.getmany(timeout_ms=0, max_records=self.max_records)
                    if not batch:
                        p.batcher.feeding(False)
                        batch = await p.consumer.getmany(timeout_ms=100, max_records=self.max_records)
                    p.health.fetch_stalled(False)
                    todo.extend((tp, self.states.get(tp), msg) for tp, msgs in batch.items() for msg in msgs)
                    p.batcher.feeding(bool(todo))
                    parsed = careful = None
                if parsed is None and todo and not self.woke():
                    blame = todo[0]
                    # Careful: a failure is then the head message's own, and one bad message does
                    # not re-run the pipelined upserts of the whole fetch at every retry.
                    parsed = await self._parse([todo[0]] if careful else todo)
                turn = time.perf_counter()
                while todo and not self.stopping():
                    if time.perf_counter() - turn > YIELD_EVERY_S:
                        # The live path awaits nothing that blocks, so a fetch of a thousand bars
                        # would hold the event loop for a whole turn: the batcher could not start
                        # the next batch when the engine finishes one. Let the others run.
                        await asyncio.sleep(0)
                        turn = time.perf_counter()
                    if self.woke():
                        todo.clear()
                        break
                    tp, st, msg = blame = todo[0]
                    if st is None or self.states.get(tp) is not st:
                        todo.popleft()  # revoked meanwhile: the next owner reads it from the committed offset
                        continue
                    if p.batcher.pending >= self.s.max_queue:  # checked here first: once per bar
                        await p.flow.backpressure(lambda: p.batcher.pending, self.s.max_queue)
                    item = parsed.get((tp, msg.offset))
                    if item is None:  # parsed alone (careful): the next one is parsed now
                        parsed = None
                        break
                    if isinstance(item.bar, events.Bar) and st.runahead is not None and st.runahead.full(item.bar.symbol):
                        p.batcher.feeding(False)  # it waits for commits, which wait for what is gathered
                        if not await p.flow.within_runahead(st, item.bar.symbol, lambda: p.committer.commit([st]),
                                                            self.stopping):
                            continue  # revoked or stopping while it waited: looked at again above
                    await self._handle(st, msg, item)
                    todo.popleft()
                    self.bars += 1  # once per message, however often an outage made it retry
                    failures = 0
                    p.health.fetch_stalled(False)
                p.ingest.flush_metrics()
                p.metrics.queue_depth.set(p.batcher.queued)  # once a fetch, not once a bar
            except Exception as err:
                if not poison.is_infrastructure(err):
                    raise
                p.batcher.feeding(False)  # what is gathered goes now; the rest waits for Redis/the broker
                parsed = None
                if poison.is_outage(err):
                    failures = 0
                    await p.recovery.ride_out(err, p.flow, p.health, self.owned, self.stopping)
                else:
                    careful = True
                    failures = await self._reply_error(err, todo, blame, failures + 1)

    async def _parse(self, items) -> dict:
        """Check first-seen partitions, then parse (and pipeline the upserts of) `items`:
        checked before the pipelined upserts can write to their windows."""
        for tp, st, msg in items:
            if st is not None and st.owned and not st.checked:
                await self.p.recovery.check(st, msg.offset)
        # Only partitions still owned once the checks are done: the pipelined upserts write to
        # Redis, and a revoked partition's windows are the next owner's (its messages are
        # skipped unparsed by run()).
        batch: dict = {}
        for tp, st, msg in items:
            if st is not None and st.owned and self.states.get(tp) is st:
                batch.setdefault(tp, []).append(msg)
        return await self.p.ingest.parse_fetch(batch)

    async def _handle(self, st: PartitionState, msg, parsed) -> None:
        p = self.p
        if isinstance(parsed.bar, events.Bar) and st.runahead is not None:
            st.runahead.handled(msg.offset, parsed.bar.symbol)
        if not st.checked:  # assigned while this fetch was being handled
            await p.recovery.check(st, msg.offset)
        try:
            out = await p.ingest.handle(st, msg, parsed)
        except Exception as exc:
            if poison.is_infrastructure(exc):
                raise  # not the message's fault: see run()
            poison.log_internal("handling", st.tp.topic, st.tp.partition, msg.offset, exc)
            st.handled(msg.offset)
            out = DeadLetter(st, msg.offset, msg.key, msg.value, poison.INTERNAL_ERROR, poison.describe(exc))
        if not st.owned and not isinstance(out, DeadLetter):
            # Revoked while it was handled (no forecast was made for it): recording it now (or
            # its scores' copies) could move the revocation's commit, still waiting for copies
            # in flight, past a bar nobody forecast. The next owner reads it again.
            return
        # The bar's own work is recorded before anything else of it is sent, so no commit can
        # pass it while its scores go out.
        if out is None:
            st.offsets.seen(msg.offset)
        elif isinstance(out, DeadLetter):
            st.offsets.add(msg.offset)
            await p.publisher.dead_letter(self.s.dlq_topic, out)
        else:
            st.offsets.add(msg.offset)
            p.batcher.submit(out)
        if parsed.scores and p.scoring is not None:  # this bar realized stored forecasts' steps
            await p.scoring.publish(st, msg.offset, parsed.scores)

    async def _reply_error(self, err: BaseException, todo: collections.deque, blame, failures: int) -> int:
        """Redis or the broker answered with an error: retry after a growing pause, or, after
        REPLY_RETRIES in a row charged to one message, dead-letter it. Returns the new count."""
        if blame is not None and failures >= poison.REPLY_RETRIES and todo and todo[0] is blame:
            todo.popleft()
            tp, st, msg = blame
            if st is not None and self.states.get(tp) is st:  # else revoked: the next owner reads it
                log.error("%s[%s]@%s failed %d times (%s): it goes to the DLQ as %s", tp.topic, tp.partition,
                          msg.offset, failures, poison.describe(err), poison.INFRASTRUCTURE_ERROR)
                self.bars += 1
                st.handled(msg.offset)
                st.offsets.add(msg.offset)
                await self.p.publisher.dead_letter(self.s.dlq_topic, DeadLetter(
                    st, msg.offset, msg.key, msg.value, poison.INFRASTRUCTURE_ERROR, poison.describe(err)))
            return 0
        delay = poison.reply_retry_delay(failures)
        if failures >= poison.REPLY_RETRIES:  # nothing to blame: stuck, say so (Health logs the change once)
            self.p.health.fetch_stalled(True, poison.describe(err))
        where = "" if blame is None else f" on {blame[0].topic}[{blame[0].partition}]@{blame[2].offset}"
        # The traceback once per run of failures: the first says where; the rest only that it goes on.
        log.log(logging.ERROR if failures == 1 else logging.WARNING, "reply error%s (try %d): %s; retrying in %.1fs",
                where, failures, poison.describe(err), delay, exc_info=err if failures == 1 else None)
        end = time.monotonic() + delay
        while time.monotonic() < end and not self.stopping():
            await asyncio.sleep(min(0.05, delay))
        return failures

"""What /readyz says: the model is loaded, the broker answers, Redis answers, and the
fetch loop is not stuck.

Each flag is kept true to the moment: Redis by a ping on every slow tick and by the fetch
loop when a command fails; the broker by a metadata request every second (a frozen broker
keeps its connections open and fetches just come back empty, so nothing else would tell);
"fetching" by the fetch loop, when an error it cannot charge to a message (a failing
fetch, a window rebuild that Redis refuses) keeps it from going on: broker and Redis may
both answer pings while nothing moves.
"""
from __future__ import annotations

import asyncio
import logging

from worker.adapters import kafka

log = logging.getLogger(__name__)


class Health:
    def __init__(self):
        self.ready = {"model_loaded": False, "kafka": False, "redis": False, "fetching": True}
        self._redis_down = False  # the fetch loop is waiting Redis out

    def checks(self) -> dict[str, bool]:
        return dict(self.ready)

    def redis_down(self, down: bool) -> None:
        """The fetch loop's word: Redis failed a command and is being waited out (down=True),
        or answered again. A Redis refusing writes still answers pings, so a ping alone must
        not say ready meanwhile."""
        self._redis_down = down
        self.ready["redis"] = not down

    def fetch_stalled(self, stalled: bool, why: str = "") -> None:
        """The fetch loop's word: it has failed poison.REPLY_RETRIES times in a row with no
        message to blame and goes on retrying (stalled=True), or it went on (said after every
        fetch and message: only a change is acted on)."""
        if self.ready["fetching"] == (not stalled):
            return
        self.ready["fetching"] = not stalled
        if stalled:
            log.warning("the fetch loop keeps failing (%s): not ready until it goes on", why)
        else:
            log.warning("the fetch loop goes on again")

    async def ping_redis(self, store, timeout_s: float = 2.0) -> bool:
        try:
            ok = await asyncio.wait_for(store.ping(), timeout_s)
        except Exception:
            ok = False
        self.ready["redis"] = bool(ok) and not self._redis_down
        return self.ready["redis"]

    async def probe_broker(self, consumer, period_s: float = 1.0, timeout_s: float = 3.0) -> None:
        """Run forever: /readyz's "kafka" follows whether the broker answers."""
        up = True
        while True:
            await asyncio.sleep(period_s)
            ok = await kafka.answers(consumer, timeout_s=timeout_s)
            self.ready["kafka"] = ok
            if ok != up:
                up = ok
                log.warning("the Kafka broker answers again" if ok else "the Kafka broker does not answer: not ready")

"""What /readyz says: the model is loaded, the broker answers, Redis answers, and the
fetch loop is not stuck.

Each flag is kept true to the moment: Redis by a ping on every slow tick and by the fetch
loop when a command fails; the broker by a metadata request every second (a frozen broker
keeps its connections open and fetches just come back empty, so nothing else would tell);
"fetching" by the fetch loop, when an error it cannot charge to a message (a failing
fetch, a window rebuild that Redis refuses) keeps it from going on: broker and Redis may
both answer pings while nothing moves.

Next to the checks, /readyz names the Redis topology and the node in use (`redis_topology`,
`redis_node`: the server, Sentinel's current primary, or a Cluster's masters) and, while
Redis is waited out, what failed (`redis_error`); `kronos_rt_redis_info` says the same.
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
        self.redis = {"redis_topology": "", "redis_node": ""}  # what /readyz says of Redis besides the checks
        self._redis_metric = None

    def checks(self) -> dict[str, bool]:
        return dict(self.ready)

    def details(self) -> dict[str, str]:
        """What /readyz adds to the checks: the Redis topology, the node in use, the error waited out."""
        return dict(self.redis)

    def note_redis_node(self, client, metrics=None) -> bool:
        """Record the topology and the node the client uses now (worker/adapters/redis_connect.py); True
        when the node changed since last noted (a Sentinel or Cluster failover)."""
        from worker.adapters import redis_connect

        if metrics is not None:
            self._redis_metric = metrics.redis_info
        before = self.redis["redis_node"]
        node = redis_connect.node_in_use(client)
        self.redis.update(redis_topology=redis_connect.topology(client), redis_node=node)
        if self._redis_metric is not None:
            self._redis_metric.info({"topology": self.redis["redis_topology"], "node": node})
        if before and node and node != before:
            log.warning("Redis (%s) now uses %s, was %s", self.redis["redis_topology"], node, before)
            return True
        return False

    def redis_down(self, down: bool, why: str = "") -> None:
        """The fetch loop's word: Redis failed a command and is being waited out (down=True),
        or answered again. A Redis refusing writes still answers pings, so a ping alone must
        not say ready meanwhile."""
        self._redis_down = down
        self.ready["redis"] = not down
        if down:
            self.redis["redis_error"] = why
        else:
            self.redis.pop("redis_error", None)

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
        why = ""
        try:
            ok = await asyncio.wait_for(store.ping(), timeout_s)
        except Exception as exc:
            from worker.pipeline import poison

            ok, why = False, poison.describe(exc) if str(exc) else "no answer within %gs" % timeout_s
        self.ready["redis"] = bool(ok) and not self._redis_down
        if not self._redis_down:  # the fetch loop's reason, while it waits Redis out, comes first
            if ok:
                self.redis.pop("redis_error", None)
            else:
                self.redis["redis_error"] = why or "PING failed"
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

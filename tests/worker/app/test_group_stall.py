"""How one killed worker disturbs the rest of its group, with dynamic and with static
membership (--group-instance-id). Two worker processes share a 4-partition topic; A is killed
-9 and started again at once. Dynamic: A's old member stays in the group until its session
times out, and the group rebalances (once or twice: A gone, A back) before A has partitions
again. Static: A's restart takes over its old membership and both get their old partitions
back (Kafka hands a returning static member its old assignment without any rebalance; the Tansu
test broker still runs one round, or two when the restarted member's join misses the first: B is
revoked at most twice). Every bar gets its forecast either way; the figures are printed."""
from __future__ import annotations

import re
import time

import pytest

from tests.worker.streams import TAPE, consume, expected_keys, forecasts_of, names
from tests.worker.processes import WorkerProcess, split, wait_for, worker_pair
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay

pytestmark = pytest.mark.slow
STALLS: dict[str, float] = {}


def revokes(p: WorkerProcess) -> int:
    return len(re.findall(r"revoked \[", p.log()))


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
async def test_a_killed_worker_restarting_stalls_the_group_only_with_dynamic_membership(
        static, broker, redis_url, redis_prefix, tmp_path):
    topics = names("stall")
    await ensure_topics(broker, {topics["bars_topic"]: 4})
    rows = prepare(TAPE, fanout=8, limit=70)
    want = expected_keys(rows)
    phases = [prepare(TAPE, fanout=8, skip=a, limit=b - a) for a, b in ((0, 45), (45, 70))]
    def flags(name: str) -> list[str]:  # static: instance ids "a" and "b"
        return ["--session-timeout-ms", "6000"] + (["--group-instance-id", name[-1]] if static else [])

    async with worker_pair(broker, redis_url, redis_prefix, topics, tmp_path, extra=flags) as pair:
        a, b, procs = pair.a, pair.b, pair.procs
        b_parts, b_revokes = b.partitions(), revokes(b)
        await replay(phases[0], broker, topics["bars_topic"])
        await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(expected_keys(phases[0])))

        a.kill9()
        t0 = time.monotonic()
        a.start()
        await wait_for(lambda: split(a, b) and (static or revokes(b) > b_revokes), 60, "A back in the group", procs)
        STALLS["static" if static else "dynamic"] = time.monotonic() - t0
        await replay(phases[1], broker, topics["bars_topic"])
        msgs = await consume(broker, topics["forecasts_topic"],
                             lambda got: {(f["symbol"], f["as_of"]) for f in forecasts_of(got)} >= want, timeout=90)
    assert pair.codes == [0, 0]
    assert {(f["symbol"], f["as_of"]) for f in forecasts_of(msgs)} >= want  # nothing lost either way
    if static:
        assert revokes(b) - b_revokes <= 2 and sorted(b.partitions()) == sorted(b_parts)
    print(f"\n{'static' if static else 'dynamic'} membership: kill -9 + restart of one worker -> back in the "
          f"group after {STALLS['static' if static else 'dynamic']:.1f}s; other worker revoked "
          f"{revokes(b) - b_revokes} time(s)")

"""Hot swap under a running replay: a worker on NAME@latest follows promotions, never loses
a bar, stamps every forecast with the version that made it, and refuses a corrupt version."""
from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from kronos_rt import Kronos, KronosPredictor, KronosTokenizer
from kronos_rt.engine_process import EngineProcess
from kronos_rt.registry import Registry
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay

from tests.worker.streams import (COLUMNS, LOOKBACK, MAX_CONTEXT, MODEL, PRED_LEN, TOKENIZER, consume,  # noqa: F401
                                  expected_keys, forecasts_of, make_settings, names, one_torch_thread)
from worker.app.worker import Worker
from worker.tools import TAPE

pytestmark = pytest.mark.slow


async def _until(cond, timeout=30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _offline_close(model_dir, rows, fc) -> np.ndarray:
    import pandas as pd

    p = KronosPredictor(Kronos.from_pretrained(model_dir), KronosTokenizer.from_pretrained(TOKENIZER),
                        device="cpu", max_context=MAX_CONTEXT)
    g = rows[rows["symbol"] == fc["symbol"]].reset_index(drop=True)
    i = int(np.flatnonzero(g["time"] == pd.Timestamp(fc["as_of"]))[0])
    w = g.iloc[max(0, i + 1 - LOOKBACK): i + 1]
    y = pd.Series(pd.to_datetime([h["ts"] for h in fc["horizon"]]))
    return p.predict(w[COLUMNS], w["time"].reset_index(drop=True), y, PRED_LEN, top_k=1, top_p=1.0)[COLUMNS].to_numpy()


@pytest.mark.parametrize("inference", ["thread", "process"])
async def test_promote_switches_between_batches_and_corrupt_version_is_refused(broker, redis_url, redis_prefix, tmp_path,
                                                                                inference):
    """With --inference process each version's engine is a child process: the new one is
    started beside the old, and the old one ended once nothing calls it."""
    reg = Registry(tmp_path / "registry")
    reg.import_dirs("par", MODEL, TOKENIZER, version="1.0.0")
    # 1.1.0: same shapes, different weights, so its forecasts differ visibly.
    m = Kronos.from_pretrained(MODEL)
    with __import__("torch").no_grad():
        m.head.proj_s1.weight.mul_(-1.0)
    m.save_pretrained(tmp_path / "m2")
    reg.import_dirs("par", tmp_path / "m2", TOKENIZER, version="1.1.0", promote=False)
    assert reg.latest("par") == "1.0.0"

    topics = names("swap")
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=2, limit=120)
    per_symbol = 40  # bars per phase and symbol
    settings = make_settings(broker, redis_url, redis_prefix, topics, model="par@latest", tokenizer="auto",
                             registry=str(reg.root), model_poll_s=0.2, inference=inference, engine_threads=1)
    worker = Worker(settings)  # builds its engine from the registry
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: worker.partitions or task.done())
        want = expected_keys(rows)
        phase = [rows[rows.groupby("symbol").cumcount().between(k * per_symbol, (k + 1) * per_symbol - 1)]
                 for k in range(3)]

        collected: dict = {}
        # consume() hands its growing message list to the predicate: keep a reference, never stop.
        collector = asyncio.create_task(consume(
            broker, topics["forecasts_topic"], lambda got: collected.update(msgs=got), timeout=120))

        def seen() -> list[dict]:
            return forecasts_of(collected.get("msgs", []))

        async def publish_and_wait(k):
            await replay(phase[k], broker, topics["bars_topic"])
            target = expected_keys(rows[rows.groupby("symbol").cumcount() < (k + 1) * per_symbol])
            await _until(lambda: {(f["symbol"], f["as_of"]) for f in seen()} >= target, 60)

        await publish_and_wait(0)
        assert {f["model"]["version"] for f in seen()} == {"1.0.0"}

        first_engine = worker.inference.engine
        reg.promote("par", "1.1.0")
        await _until(lambda: worker.inference.model_ref.version == "1.1.0")  # switched between batches
        if inference == "process":
            assert isinstance(worker.inference.engine, EngineProcess) and worker.inference.engine.pid is not None
            # the old version's process ends once switched (on the inference thread, just after)
            await _until(lambda: first_engine.pid is None, 10)
        await publish_and_wait(1)

        # 1.2.0 is corrupted after import: verification must refuse it.
        reg.import_dirs("par", tmp_path / "m2", TOKENIZER, version="1.2.0", promote=False)
        path = reg.get("par", "1.2.0").model_dir / "model.safetensors"
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
        reg.promote("par", "1.2.0")
        await _until(lambda: worker.metrics.model_swaps.labels(result="rejected")._value.get() >= 1)
        await publish_and_wait(2)
    finally:
        worker.stop()
        assert await asyncio.wait_for(task, 60)
        collector.cancel()

    fcs = seen()
    counts = Counter((f["symbol"], f["as_of"]) for f in fcs)
    assert set(counts) == want  # no bar lost across both swaps
    for key, n in counts.items():  # duplicates (if any) identical
        if n > 1:
            dup = [f for f in fcs if (f["symbol"], f["as_of"]) == key]
            assert all(d["horizon"] == dup[0]["horizon"] for d in dup)
    # versions change at one point: ordered by source offset, per partition, 1.0.0 then 1.1.0
    for part in {f["source"]["partition"] for f in fcs}:
        seq = [f["model"]["version"] for f in sorted(fcs, key=lambda f: f["source"]["offset"])
               if f["source"]["partition"] == part]
        first_new = seq.index("1.1.0")
        assert set(seq[:first_new]) == {"1.0.0"} and set(seq[first_new:]) == {"1.1.0"}
    assert "1.2.0" not in {f["model"]["version"] for f in fcs}
    assert worker.metrics.model_swaps.labels(result="ok")._value.get() == 1
    # each version's forecasts are that version's model's
    for version, model_dir in (("1.0.0", MODEL), ("1.1.0", tmp_path / "m2")):
        fc = next(f for f in fcs if f["model"]["version"] == version)
        got = np.array([[h[c] for c in COLUMNS] for h in fc["horizon"]])
        np.testing.assert_allclose(got, _offline_close(model_dir, rows, fc), rtol=1e-4, atol=1e-2)

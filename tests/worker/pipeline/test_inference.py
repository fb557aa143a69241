"""worker/pipeline/inference.py: windows of mixed lengths are forecast exactly as each alone; a model
swap submitted through the batcher's thread lands between two batches."""
import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kronos_rt import Engine, Kronos, KronosTokenizer
from kronos_rt.features import COLUMNS
from worker.pipeline.batcher import MicroBatcher
from worker.config import ModelRef, Settings
from worker.lifecycle.hotswap import LoadedModel
from worker.pipeline.inference import Inference
from worker.ops.metrics import WorkerMetrics

from tests.kronos_rt.conftest import PARITY, TAPE

SETTINGS = Settings(lookback=64, min_history=32, pred_len=3, max_context=128, top_k=1, metrics_port=0, worker_id="t")


@pytest.fixture(scope="module")
def engine():
    return Engine(Kronos.from_pretrained(PARITY / "model"), KronosTokenizer.from_pretrained(PARITY / "tokenizer"),
                  device="cpu", max_context=128)


@pytest.fixture(scope="module")
def tape():
    return pd.read_csv(TAPE, parse_dates=["timestamps"])


def _item(tape, start, n, pred_len=3):
    rows = tape.iloc[start:start + n]
    times = rows["timestamps"].to_numpy().astype("datetime64[s]")
    horizon = [t.to_pydatetime() for t in tape["timestamps"].iloc[start + n:start + n + pred_len]]
    return SimpleNamespace(values=rows[list(COLUMNS)].to_numpy(), times=times, horizon=horizon)


def test_sampling_is_built_once_from_the_settings(engine):
    inf = Inference(engine, ModelRef("parity", "parity", "1"), SETTINGS, WorkerMetrics())
    assert inf.sampling.top_k == 1 and inf.sampling.sample_count == SETTINGS.sample_count


def test_mixed_lengths_forecast_as_each_alone(engine, tape):
    inf = Inference(engine, ModelRef("parity", "parity", "1"), SETTINGS, WorkerMetrics())
    seen = []
    inf.add_observer(lambda items, seconds: seen.append((len(items), seconds)))
    items = [_item(tape, s, n) for s, n in ((0, 40), (300, 64), (700, 33), (900, 64), (1200, 40))]
    together = inf.compute(items)
    assert [ref for _, ref in together] == [inf.model_ref] * len(items)
    for it, (fc, _) in zip(items, together):
        (alone, _), = inf.compute([it])
        np.testing.assert_array_equal(fc.mean, alone.mean)
    assert seen[0][0] == len(items) and all(s > 0 for _, s in seen)


async def test_swap_lands_between_batches(engine, tape):
    """A swap submitted while a batch computes waits for it; the batch after uses the new model."""
    metrics = WorkerMetrics()
    inf = Inference(engine, ModelRef("parity", "parity", "1"), SETTINGS, metrics)
    entered, release = threading.Event(), threading.Event()
    threads = set()

    def gate(items, seconds):  # holds the first batch on the inference thread
        threads.add(threading.get_ident())
        if not release.is_set():
            entered.set()
            release.wait(10)

    inf.add_observer(gate)
    batches = []

    async def handle(batch):
        batches.append([ref.version for _, ref in batch.results])

    batcher = MicroBatcher(inf.compute, handle, max_batch=8, max_wait_s=0.001)
    batcher.start()
    try:
        batcher.submit(_item(tape, 0, 40))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        swap = batcher.run_in_thread(inf.switch, LoadedModel(engine, "parity", "2", str(PARITY)))
        batcher.submit(_item(tape, 100, 40))  # queued behind the running batch
        await asyncio.sleep(0.05)
        assert not swap.done()  # it waits for the running batch
        release.set()
        await swap
        assert await batcher.drain(10)
    finally:
        await batcher.close()
    assert batches == [["1"], ["2"]]
    assert len(threads) == 1  # every batch on the one inference thread
    assert metrics.model_swaps.labels(result="ok")._value.get() == 1


def test_inference_settings_are_checked_and_engine_threads_leave_a_core_to_the_loop():
    from worker import config
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="--inference must be thread or process"):
        Settings(inference="gpu", worker_id="t")
    with pytest.raises(ConfigError, match="--engine-threads must be >= 0"):
        Settings(engine_threads=-1, worker_id="t")
    cores = len(__import__("os").sched_getaffinity(0))
    assert config.engine_threads(0) == max(1, cores - 1)
    assert config.engine_threads(3) == 3


def test_memory_gauges_come_from_the_engine_without_a_call_to_its_process(engine):
    """report_memory runs on the event loop: it asks the engine what it last knew (a process
    engine answers from its last forecast), and a CPU engine has nothing to report."""
    metrics = WorkerMetrics()
    inf = Inference(engine, ModelRef("m", "m", "1"), SETTINGS, metrics)

    def gauges():
        return {s.labels["kind"]: s.value for m in metrics.registry.collect()
                if m.name == "kronos_rt_gpu_memory_bytes" for s in m.samples}

    inf.report_memory()
    assert gauges() == {"allocated": 0, "reserved": 0}
    inf.engine = SimpleNamespace(memory_in_use=lambda: (123, 456), device="cuda:0", dtype="float16")
    inf.report_memory()
    assert gauges() == {"allocated": 123, "reserved": 456}


def test_an_engine_process_that_dies_is_counted_and_the_batch_answered(tape):
    """--inference process: a killed engine process is started again, the batch in flight sent
    again, and kronos_rt_engine_restarts_total says so."""
    import os
    import signal

    from kronos_rt.engine_process import EngineProcess, EngineSpec

    metrics = WorkerMetrics()
    with EngineProcess(EngineSpec(str(PARITY / "model"), str(PARITY / "tokenizer"), device="cpu",
                                  max_context=128, threads=1)) as child:
        inf = Inference(child, ModelRef("m", "m", "1"), SETTINGS, metrics)
        items = [_item(tape, 100 + i, 40) for i in range(3)]
        first = inf.compute(items)
        os.kill(child.pid, signal.SIGKILL)
        again = inf.compute(items)
    assert [np.array_equal(a[0].mean, b[0].mean) for a, b in zip(first, again)] == [True] * 3
    assert metrics.engine_restarts._value.get() == 1

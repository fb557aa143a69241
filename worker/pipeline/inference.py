"""Inference: load the engine, forecast ready windows on the batcher's thread, swap models.

Everything that touches the engine runs on the micro-batcher's one inference thread:
compute() for each batch, warm_up() before the first, and switch() for a hot swap,
submitted through the same thread (`MicroBatcher.run_in_thread`) so it lands between
two batches. No attribute is shared with the event loop while batches run.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from worker import config
from worker.config import ModelRef, Settings, resolve_model

log = logging.getLogger(__name__)

# observer(items, seconds) after each engine batch, on the inference thread.
BatchObserver = Callable[[Sequence[Any], float], None]


def build_engine(settings: Settings, model: str | None = None, tokenizer: str | None = None):
    """Load a model and tokenizer (default: the settings' --model / --tokenizer) with
    kronos_rt.load_engine, the loader start-up, hot swap, bench-stream and `models verify`
    share; with --inference process, in a child process of its own (an EngineProcess, called
    as an Engine). Returns (engine, model ModelRef)."""
    model_ref = resolve_model(model or settings.model, "model", settings.registry)
    tok_ref = resolve_model(tokenizer or config.tokenizer_spec(settings), "tokenizer", settings.registry)
    device = None if settings.device == "auto" else settings.device
    if settings.inference == "process":
        from kronos_rt.engine_process import EngineProcess, EngineSpec

        spec = EngineSpec(str(model_ref.location), str(tok_ref.location), device=device, dtype=settings.dtype,
                          max_context=settings.max_context, revision=model_ref.revision,
                          tokenizer_revision=tok_ref.revision, threads=config.engine_threads(settings.engine_threads))
        return EngineProcess(spec), model_ref
    import torch

    from kronos_rt import load_engine

    torch.set_num_threads(config.engine_threads(settings.engine_threads))  # process-wide: its torch is the engine's
    engine = load_engine(model_ref.location, tok_ref.location, device=device, dtype=settings.dtype,
                         max_context=settings.max_context, revision=model_ref.revision,
                         tokenizer_revision=tok_ref.revision)
    return engine, model_ref


def close_engine(engine) -> None:
    """End an engine's process (--inference process); an in-process engine is left to the
    collector."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def sampling_params(settings: Settings):
    from kronos_rt import SamplingParams

    return SamplingParams(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                          sample_count=settings.sample_count, seed=settings.seed)


class Inference:
    def __init__(self, engine, model_ref: ModelRef, settings: Settings, metrics):
        self.engine = engine
        self.model_ref = model_ref
        self.pred_len = settings.pred_len
        self.quantiles = settings.quantiles
        self.min_history = settings.min_history
        self.sampling = sampling_params(settings)
        self.metrics = metrics
        self._observers: list[BatchObserver] = []
        self.keep_paths = False  # sample paths on each forecast (live scoring's CRPS)
        self._count_restarts(engine)
        self.publish_model()

    def _count_restarts(self, engine) -> None:
        """An engine in its own process (--inference process) that died and was started again
        is counted (kronos_rt_engine_restarts_total); its own log line says the exit code."""
        counter = getattr(self.metrics, "engine_restarts", None)
        if counter is not None and hasattr(engine, "on_restart"):
            engine.on_restart = lambda code: counter.inc()

    def add_observer(self, fn: BatchObserver) -> None:
        """Call fn(items, seconds) after each engine batch (on the inference thread)."""
        self._observers.append(fn)

    def publish_model(self) -> None:
        e = self.engine
        self.metrics.set_model(self.model_ref.name, self.model_ref.version, str(e.device),
                               str(e.dtype).replace("torch.", ""), getattr(self.model_ref, "random_weights", False))

    def report_memory(self) -> None:
        """GPU memory gauges (CPU engines report nothing). Asked of the engine, which may be
        in a process of its own (kronos_rt/engine_process.py)."""
        in_use = self.engine.memory_in_use()
        if in_use is not None:
            self.metrics.gpu_memory.labels(kind="allocated").set(in_use[0])
            self.metrics.gpu_memory.labels(kind="reserved").set(in_use[1])

    def warm_up(self) -> None:
        """One tiny forecast so the first real batch does not pay for lazy initialisation."""
        n = max(2, min(self.min_history, 16))
        times = np.datetime64("2024-01-02T09:30:00") + np.arange(n + 1) * np.timedelta64(300, "s")
        vals = np.tile([10.0, 10.2, 9.9, 10.1, 1000.0, 10000.0], (n, 1)) + np.arange(n)[:, None] * 0.01
        self.engine.forecast([vals], [times[:n]], [times[n:]], 1, self.sampling)

    def switch(self, loaded) -> None:
        """Serve `loaded` (a hotswap.LoadedModel) from the next batch on. Run it on the
        inference thread (MicroBatcher.run_in_thread): it then lands between two batches."""
        old, old_engine = self.model_ref, self.engine
        self.engine = loaded.engine
        self._count_restarts(loaded.engine)
        self.model_ref = ModelRef(loaded.location, loaded.name, loaded.version,
                                  random_weights=getattr(loaded, "random_weights", False))
        self.metrics.model_swaps.labels(result="ok").inc()
        self.publish_model()
        close_engine(old_engine)  # its process, if it has one: nothing calls it any more
        log.info("switched model %s@%s -> %s@%s", old.name, old.version, loaded.name, loaded.version)

    def compute(self, items: Sequence[Any]) -> list[tuple[Any, ModelRef]]:
        """Forecast ready windows (each with .values, .times, .horizon); each result carries
        the ModelRef of the engine that made it. An item may carry its own `pred_len`,
        `sampling` (SamplingParams) and `quantiles` (HTTP requests); stream items use the
        settings'."""
        t0 = time.perf_counter()
        engine, ref = self.engine, self.model_ref
        # One engine call per window length: a window's forecast is then the same bits whatever
        # else is in the batch (ragged batches are padded, which moves the last bits), so a bar
        # forecast again after a failover gets an identical copy. All windows have the full
        # lookback once warm, so this is one call in steady state.
        # Requests with their own horizon length or sampling (HTTP) are grouped apart the same way.
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            q = getattr(it, "quantiles", None)
            key = (len(it.values), getattr(it, "pred_len", None) or self.pred_len,
                   getattr(it, "sampling", None) or self.sampling, tuple(self.quantiles if q is None else q))
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(items)
        for (_, pred_len, sampling, quantiles), idx in groups.items():
            part = [items[i] for i in idx]
            horizons = [it.horizon for it in part]
            if len({len(h) for h in horizons}) == 1:  # one conversion for the group: rows [pred_len]
                horizons = list(np.array(horizons, dtype="datetime64[s]"))
            else:
                horizons = [np.array(h, dtype="datetime64[s]") for h in horizons]
            forecasts = engine.forecast(
                [it.values for it in part], [it.times for it in part], horizons,
                pred_len, sampling, quantiles=quantiles,
                return_paths=self.keep_paths and sampling.sample_count > 1,
            )
            for i, fc in zip(idx, forecasts):
                out[i] = (fc, ref)
        elapsed = time.perf_counter() - t0
        for fn in self._observers:
            fn(items, elapsed)
        return out

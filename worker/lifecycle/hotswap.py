"""Rolling a worker's model forward and back without stopping it.

A worker started with `--model NAME@latest` follows the registry: when `latest` moves (a
promote or a rollback), or when the process gets SIGHUP, the watcher verifies the new
version (checksums, model/tokenizer compatibility, strict load, canary forecast), loads it
beside the current one off the event loop, and hands it over. The worker switches engines
between two batches, so no bar is dropped and every forecast names the version that made it.
A version that fails verification is not switched to (and not retried until `latest` moves).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

log = logging.getLogger("kronos_rt.hotswap")


@dataclass(frozen=True)
class LoadedModel:
    engine: Any
    name: str
    version: str
    location: str
    random_weights: bool = False


def follows_latest(spec: str) -> bool:
    """True for NAME or NAME@latest registry specs (not directories or Hub ids)."""
    name, _, version = str(spec).partition("@")
    return "/" not in name and version in ("", "latest")


class ModelWatcher:
    def __init__(self, registry, name: str, current_version: str, load: Callable[[Any], Any],
                 metrics=None, verify_device=None):
        """`load(model_version) -> engine` builds an engine on the worker's device."""
        self.registry = registry
        self.name = name
        self.current = current_version
        self.load = load
        self.metrics = metrics
        self.verify_device = verify_device
        self.rejected: set[str] = set()
        self._busy = asyncio.Lock()

    async def poll(self, force: bool = False) -> LoadedModel | None:
        """Check `latest`; return the new model, loaded and verified, when it should be switched to.

        force (SIGHUP): re-check a version even if it was rejected before.
        """
        if self._busy.locked():
            return None
        async with self._busy:
            try:
                mv = await asyncio.to_thread(self.registry.resolve, f"{self.name}@latest")
            except Exception as exc:  # registry unreadable: keep serving the current model
                log.warning("model registry: cannot resolve %s@latest: %s", self.name, exc)
                return None
            if mv.version == self.current or (mv.version in self.rejected and not force):
                return None
            log.info("model %s: latest is now %s (serving %s); verifying", self.name, mv.version, self.current)
            report = await asyncio.to_thread(self._verify, mv)
            if not report.ok:
                self.rejected.add(mv.version)
                self._count("rejected")
                log.error("model %s@%s failed verification, not switching: %s", self.name, mv.version,
                          "; ".join(f"{c.name}: {c.detail}" for c in report.failures))
                return None
            try:
                engine = await asyncio.to_thread(self.load, mv)
            except Exception as exc:
                self.rejected.add(mv.version)
                self._count("rejected")
                log.error("model %s@%s failed to load, not switching: %s", self.name, mv.version, exc)
                return None
            self.rejected.discard(mv.version)
            self.current = mv.version
            return LoadedModel(engine, mv.name, mv.version, str(mv.model_dir), mv.random_weights)

    async def follow(self, reload: asyncio.Event, poll_s: float,
                     switch: Callable[[LoadedModel], Awaitable[None]]) -> None:
        """Poll every poll_s seconds, or at once when `reload` is set (SIGHUP, forced), and
        hand each new model to switch() (the worker runs it between two batches)."""
        while True:
            try:
                await asyncio.wait_for(reload.wait(), timeout=poll_s)
            except asyncio.TimeoutError:
                pass
            forced = reload.is_set()
            reload.clear()
            try:
                loaded = await self.poll(force=forced)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("model watcher")
                continue
            if loaded is not None:
                await switch(loaded)

    def _verify(self, mv):
        from kronos_rt.registry import verify_version

        return verify_version(mv, device=self.verify_device)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.model_swaps.labels(result=result).inc()


async def follow_registry(settings, inference, batcher, metrics, reload: asyncio.Event) -> None:
    """For --model NAME@latest (returns at once otherwise): follow the registry's `latest`
    (and re-check on `reload`), load each new version on the serving engine's device and
    dtype, and switch `inference` to it on the batcher's thread, between two batches. Used by
    the worker and `kronos-rt serve`."""
    import dataclasses

    from kronos_rt.registry import Registry
    from worker import config
    from worker.pipeline.inference import build_engine

    if not (follows_latest(settings.model) and config.is_registry_spec(settings.model)):
        return
    engine = inference.engine

    name = settings.model.partition("@")[0]
    same_tokenizer = config.tokenizer_spec(settings) == settings.model
    on_device = dataclasses.replace(settings, device=str(engine.device),
                                    dtype=str(engine.dtype).replace("torch.", ""))

    def load(mv):
        return build_engine(on_device, str(mv.model_dir), str(mv.tokenizer_dir) if same_tokenizer else None)[0]

    watcher = ModelWatcher(Registry(settings.registry or None), name, inference.model_ref.version, load, metrics,
                           verify_device=engine.device)
    await watcher.follow(reload, settings.model_poll_s, lambda loaded: batcher.run_in_thread(inference.switch, loaded))


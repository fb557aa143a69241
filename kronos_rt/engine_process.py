"""An Engine in a process of its own, called like an Engine.

Why: an engine call is a few hundred torch operations, each dispatched from Python while
holding the GIL. A caller whose own threads do Python work at the same time (a service
handling thousands of messages while a batch computes) shares one GIL with it, and each
slows the other: on a GPU, where the kernels are short, the dispatch is most of the call.
In a child process the engine has an interpreter of its own; the caller's thread waits on a
socket, which releases the GIL.

`EngineProcess(EngineSpec(...))` starts a child (`python -m kronos_rt.engine_process`, a
fresh interpreter: CUDA cannot be initialised in a forked child, and multiprocessing's
"spawn" would re-run the caller's main script) that loads the checkpoints with
`load_engine`, then answers `forecast` and `release_workspaces` calls one at a time, as an
Engine does; `memory_in_use` is the figure its last forecast brought back. The forecasts are
the child's Engine's, bit for bit. `last_compute_s` is the child's own time for the last
forecast: the engine alone, without the hand-over.

If the child dies (killed, out of memory), the call in flight starts a new child and is sent
again, once; a second death raises EngineProcessError. A child whose parent dies sees its
socket close and exits. Calls and replies are pickled over a socket pair
(multiprocessing's Connection); on Linux a batch's windows go through a memory file both
processes map instead (`_SharedBatch`), so handing over a thousand windows is a copy, not a
pickle pushed through the socket a few hundred KiB at a time (each chunk waits for the GIL
again while the caller's other threads are busy).

Imports: kronos_rt's engine and loader (in the child), numpy, the standard library.
"""
from __future__ import annotations

import logging
import mmap
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kronos_rt.engine import Forecast
from kronos_rt.sampling import SamplingParams


log = logging.getLogger(__name__)


class EngineProcessError(RuntimeError):
    """The engine's process exited before it answered (twice in one call, or while loading),
    or is closed. A loader's error (a bad checkpoint, no CUDA) is raised as itself."""


@dataclass(frozen=True)
class EngineSpec:
    """What the child passes to load_engine (see kronos_rt/loading.py)."""
    model: str
    tokenizer: str
    device: str | None = None
    dtype: str | None = None
    max_context: int = 512
    revision: str | None = None
    tokenizer_revision: str | None = None
    threads: int = 0  # torch's intra-op threads in the child; 0: torch's default (one per core)


class _SharedBatch:
    """A memory file (memfd) both processes map: the caller writes a batch's arrays into it,
    the child reads them in place. It grows (never shrinks) to the largest batch; each call
    says the size it was written at, so the child maps it again after a growth."""

    def __init__(self, fd: int):
        self.fd, self.size, self.map = fd, 0, None

    def attach(self, size: int) -> None:
        if size != self.size:
            self.map = mmap.mmap(self.fd, size)
            self.size = size

    def put(self, arrays: list[np.ndarray]) -> tuple[int, list[tuple[int, tuple, str]]]:
        """Write the arrays (the caller side); returns (size, [(offset, shape, dtype)])."""
        layout, end = [], 0
        for a in arrays:
            start = -(-end // 64) * 64
            layout.append((start, a.shape, a.dtype.str))
            end = start + a.nbytes
        if end > self.size:
            size = -(-max(end, 2 * self.size, 1 << 20) // mmap.PAGESIZE) * mmap.PAGESIZE
            os.ftruncate(self.fd, size)
            self.attach(size)
        for (start, shape, dtype), a in zip(layout, arrays):
            np.ndarray(shape, dtype, buffer=self.map, offset=start)[...] = a
        return self.size, layout

    def close(self) -> None:
        """Unmap and close the file: its memory is freed once the child's side is gone too."""
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self.fd)

    def views(self, size: int, layout) -> list[np.ndarray]:
        """The arrays in place (the child side); valid until the next call."""
        self.attach(size)
        return [np.ndarray(shape, dtype, buffer=self.map, offset=start) for start, shape, dtype in layout]


def _serve(conn, spec: EngineSpec, shared: _SharedBatch | None) -> None:
    """The child: load, say what was loaded, then answer calls until the pipe closes."""
    try:
        import torch

        from kronos_rt.loading import load_engine

        if spec.threads > 0:
            torch.set_num_threads(spec.threads)

        engine = load_engine(spec.model, spec.tokenizer, device=spec.device, dtype=spec.dtype,
                             max_context=spec.max_context, revision=spec.revision,
                             tokenizer_revision=spec.tokenizer_revision)
    except BaseException as err:  # noqa: BLE001 - the parent raises it, with the child's traceback
        conn.send(("error", _portable(err), traceback.format_exc()))
        return
    conn.send(("ready", {"device": str(engine.device), "dtype": engine.dtype, "max_context": engine.max_context}))
    while True:
        try:
            op, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe, or died
            return
        if op == "close":
            return
        try:
            if op in ("forecast", "forecast_shared"):
                t0 = time.perf_counter()
                if op == "forecast_shared":  # (size, layout, pred_len, sampling): the windows in the memory file
                    args = (*shared.views(*args[:2]), *args[2:])
                out = engine.forecast(*args, **kwargs)
                del args  # no view of the memory file outlives the call
                reply = ("ok", _pack(out), (time.perf_counter() - t0, engine.memory_in_use()))
            elif op == "release_workspaces":
                reply = ("ok", engine.release_workspaces(), 0.0)
            else:
                reply = ("raise", ValueError(f"unknown engine call {op!r}"), "")
        except Exception as err:  # noqa: BLE001 - a bad window is the caller's error, as in-process
            reply = ("raise", _portable(err), traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:  # the parent went away mid-call
            return


def _portable(err: BaseException) -> BaseException:
    """err itself when it survives pickling (ValueError, ...), else a RuntimeError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")


def _pack(forecasts: list[Forecast]):
    """Forecasts with only a mean of one shape go back as one array: one buffer to pickle,
    not a thousand objects."""
    if forecasts and all(not f.quantiles and f.paths is None for f in forecasts) \
            and len({f.mean.shape for f in forecasts}) == 1:
        return ("means", np.stack([f.mean for f in forecasts]))
    return ("list", forecasts)


def _unpack(packed) -> list[Forecast]:
    kind, value = packed
    return [Forecast(mean=m) for m in value] if kind == "means" else value


def _stacked(arrays):
    """Same-shaped arrays as one array (one buffer to hand over), else the list as it is. The
    engine stacks a uniform batch itself, with the same result."""
    if isinstance(arrays, np.ndarray) or len(arrays) < 2:
        return arrays
    try:
        return np.stack(arrays)
    except ValueError:  # windows of several lengths: the engine takes them one by one
        return list(arrays)


class EngineProcess:
    """An Engine's forecast interface over a child process (see the module docstring).
    Calls are serialized, as on an Engine; close() ends the child."""

    def __init__(self, spec: EngineSpec, start_timeout_s: float = 600.0):
        self.spec = spec
        self.start_timeout_s = start_timeout_s
        self.last_compute_s = 0.0
        self.restarts = 0
        self.on_restart: Callable[[int | None], None] | None = None  # (the dead child's exit code), after a restart
        self._memory: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self._proc = self._conn = None
        # Linux: a memory file for the batches (elsewhere they are pickled through the socket)
        self._shared = _SharedBatch(os.memfd_create("kronos-rt-batch")) if hasattr(os, "memfd_create") else None
        try:
            self._start()
        except BaseException:
            if self._shared is not None:
                self._shared.close()
            raise

    # what callers read from an Engine
    device: Any
    dtype: Any
    max_context: int

    def _start(self) -> None:
        import torch

        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        # The child finds kronos_rt where this process found it, whatever its working directory.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        fds = (theirs.fileno(),) + ((self._shared.fd,) if self._shared is not None else ())
        proc = subprocess.Popen([sys.executable, "-m", "kronos_rt.engine_process", *map(str, fds)],
                                pass_fds=fds, env=env)
        theirs.close()  # the child's end lives in the child only: its death closes the socket here
        parent = Connection(ours.detach())
        try:
            parent.send(self.spec)
            if not parent.poll(self.start_timeout_s):
                raise EngineProcessError(f"the engine process did not load {self.spec.model} "
                                         f"within {self.start_timeout_s:.0f} s")
            msg = parent.recv()
        except (EOFError, OSError):
            parent.close()
            raise EngineProcessError(f"the engine process exited with code {_end(proc)} "
                                     f"while loading {self.spec.model}") from None
        except BaseException:
            parent.close()
            proc.kill()
            proc.wait()
            raise
        if msg[0] == "error":  # the loader's own error (CheckpointError, CUDA missing, ...), as in-process
            parent.close()
            _end(proc)
            err = msg[1]
            err.add_note(f"raised in the engine process while loading {self.spec.model}:\n{msg[2]}")
            raise err
        info = msg[1]
        self.device, self.dtype, self.max_context = torch.device(info["device"]), info["dtype"], info["max_context"]
        self._proc, self._conn = proc, parent

    def _call(self, op: str, *args, **kwargs):
        with self._lock:
            if self._proc is None:
                raise EngineProcessError("the engine process is closed")
            for attempt in (1, 2):
                try:
                    self._conn.send((op, args, kwargs))
                    kind, value, extra = self._conn.recv()
                    break
                except (EOFError, OSError):  # the child died: a new one, the same call once more
                    code = self._reap()
                    if attempt == 2:
                        raise EngineProcessError(f"the engine process died twice in one {op} call "
                                                 f"(exit code {code})") from None
                    self.restarts += 1
                    log.warning("the engine process exited with code %s during a %s call; starting a new one "
                                "and sending the call again", code, op)
                    self._start()
                    if self.on_restart is not None:
                        self.on_restart(code)
            if kind == "raise":
                value.add_note(f"raised in the engine process:\n{extra}")
                raise value
            if op.startswith("forecast"):
                self.last_compute_s, self._memory = extra
            return value

    def _reap(self) -> int | None:
        self._conn.close()
        return _end(self._proc)

    def forecast(self, bars, x_times, y_times, pred_len: int, sampling: SamplingParams = SamplingParams(),
                 quantiles=(), return_paths: bool = False) -> list[Forecast]:
        """Engine.forecast, computed in the child (which checks the arguments, as in-process)."""
        arrays = [_stacked(bars), _stacked(x_times), _stacked(y_times)]
        kwargs = dict(quantiles=tuple(quantiles), return_paths=return_paths)
        with self._lock:  # the memory file holds one call's windows at a time
            if self._shared is not None and all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays):
                packed = self._call("forecast_shared", *self._shared.put(arrays), pred_len, sampling, **kwargs)
            else:
                packed = self._call("forecast", *arrays, pred_len, sampling, **kwargs)
        return _unpack(packed)

    def release_workspaces(self) -> None:
        self._call("release_workspaces")

    def memory_in_use(self) -> tuple[int, int] | None:
        """The child's device memory as of its last forecast: no call, so the event loop may
        ask while a batch computes."""
        return self._memory

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def close(self) -> None:
        """End the child (idempotent)."""
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send(("close", (), {}))
            except (EOFError, OSError):
                pass
            self._reap()
            self._proc = self._conn = None
            if self._shared is not None:  # a hot swap ends one engine per version: its batch memory with it
                self._shared.close()
                self._shared = None

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _end(proc: subprocess.Popen, wait_s: float = 5.0) -> int | None:
    """The child's exit code, once it has ended (killed if it has not within wait_s)."""
    try:
        return proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


if __name__ == "__main__":  # the child: argv[1] is its end of the socket pair, argv[2] the memory file
    import signal
    from multiprocessing.connection import Connection

    # Ctrl-C reaches the whole process group: the owner decides when this process ends (it
    # finishes its queued batches first), by closing the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    _conn = Connection(int(sys.argv[1]))
    _serve(_conn, _conn.recv(), _SharedBatch(int(sys.argv[2])) if len(sys.argv) > 2 else None)

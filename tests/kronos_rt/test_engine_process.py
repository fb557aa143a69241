"""kronos_rt/engine_process.py: the Engine in a child process gives the Engine's forecasts,
bit for bit, passes its errors on, comes back after a kill, and ends with its owner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kronos_rt import SamplingParams, load_engine
from kronos_rt.engine_process import EngineProcess, EngineProcessError, EngineSpec

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
MODEL, TOKENIZER = str(PARITY / "model"), str(PARITY / "tokenizer")
GREEDY = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, sample_count=1)
STEP = np.timedelta64(300, "s")


def windows(n: int, length: int, pred_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    bars, xt, yt = [], [], []
    for i in range(n):
        close = 10 + np.cumsum(rng.normal(0, 0.05, length))
        b = np.column_stack([close, close + 0.1, close - 0.1, close, rng.uniform(1e3, 2e3, length),
                             rng.uniform(1e4, 2e4, length)])
        t = np.datetime64("2024-01-02T09:30:00") + np.arange(length + pred_len) * STEP + i * STEP
        bars.append(np.asfortranarray(b))  # as the worker's windows come: column-major
        xt.append(t[:length])
        yt.append(t[length:])
    return bars, xt, yt


@pytest.fixture(scope="module")
def in_process():
    return load_engine(MODEL, TOKENIZER, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def child():
    with EngineProcess(EngineSpec(MODEL, TOKENIZER, device="cpu", dtype="float32", threads=1)) as ep:
        yield ep


def same(a, b) -> bool:
    return all(np.array_equal(x.mean, y.mean) and x.quantiles.keys() == y.quantiles.keys()
               and all(np.array_equal(x.quantiles[q], y.quantiles[q]) for q in x.quantiles)
               and (x.paths is None) == (y.paths is None) and (x.paths is None or np.array_equal(x.paths, y.paths))
               for x, y in zip(a, b, strict=True))


def test_it_answers_as_the_engine_does(in_process, child):
    import torch

    assert child.device == torch.device("cpu") and child.dtype == torch.float32
    assert child.max_context == in_process.max_context
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child's thread count: the same kernels, the same bits
    try:
        cases = [
            (windows(64, 32, 2), 2, GREEDY, {}),  # a stream batch: one length
            (windows(1, 20, 3), 3, GREEDY, {}),  # one window
            # ragged windows: window by window in the engine
            (tuple(a + b for a, b in zip(windows(3, 20, 2), windows(2, 28, 2, seed=1))), 2, GREEDY, {}),
            # sampled, seeded: bands and paths come back too
            (windows(8, 24, 2), 2, SamplingParams(temperature=1.0, top_k=0, top_p=0.9, sample_count=4, seed=7),
             dict(quantiles=(0.1, 0.9), return_paths=True)),
        ]
        for (bars, xt, yt), pred_len, sampling, kw in cases:
            want = in_process.forecast(bars, xt, yt, pred_len, sampling, **kw)
            got = child.forecast(bars, xt, yt, pred_len, sampling, **kw)
            assert same(want, got)
            assert child.last_compute_s > 0  # the child's own time, without the hand-over
        if child._shared is not None:  # Linux: the windows went through the memory file, which grows
            size = child._shared.size
            bars, xt, yt = windows(700, 40, 1, seed=2)  # 1.3 MiB of windows
            assert same(in_process.forecast(bars, xt, yt, 1, GREEDY), child.forecast(bars, xt, yt, 1, GREEDY))
            assert child._shared.size > size
    finally:
        torch.set_num_threads(threads)
    assert child.memory_in_use() is None  # a CPU engine has no device memory to report


def test_a_bad_window_raises_the_engines_error_and_the_process_serves_on(child):
    bars, xt, yt = windows(2, 16, 1)
    with pytest.raises(ValueError, match="shape"):
        child.forecast([np.zeros((16, 5))], xt[:1], yt[:1], 1, GREEDY)
    with pytest.raises(ValueError, match="same length"):
        child.forecast(bars, xt[:1], yt, 1, GREEDY)
    assert len(child.forecast(bars, xt, yt, 1, GREEDY)) == 2


def test_a_killed_process_is_replaced_and_the_call_answered(in_process):
    bars, xt, yt = windows(4, 16, 1)
    with EngineProcess(EngineSpec(MODEL, TOKENIZER, device="cpu", dtype="float32", threads=1)) as ep:
        first = ep.forecast(bars, xt, yt, 1, GREEDY)
        old = ep.pid
        os.kill(old, signal.SIGINT)  # Ctrl-C reaches the process group: the owner decides, not the child
        assert same(first, ep.forecast(bars, xt, yt, 1, GREEDY)) and ep.restarts == 0
        os.kill(old, signal.SIGKILL)
        again = ep.forecast(bars, xt, yt, 1, GREEDY)  # sent to a new child, once
        assert ep.restarts == 1 and ep.pid != old
        assert same(first, again)
        shared = ep._shared
        ep.close()
        if shared is not None:  # the batch memory goes with the engine (a hot swap ends one per version)
            with pytest.raises(OSError):
                os.fstat(shared.fd)
        with pytest.raises(EngineProcessError, match="closed"):
            ep.forecast(bars, xt, yt, 1, GREEDY)
        ep.close()  # idempotent


def test_what_the_loader_raises_in_the_child_is_raised_as_itself(tmp_path):
    """The same error as in-process (the CLI's messages map it), the child's traceback in a note."""
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found") as caught:
        EngineProcess(EngineSpec(str(tmp_path / "missing"), TOKENIZER, device="cpu"))
    assert "raised in the engine process while loading" in caught.value.__notes__[0]
    if not __import__("torch").cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            EngineProcess(EngineSpec(MODEL, TOKENIZER, device="cuda:0"))


def test_the_child_ends_when_its_owner_goes():
    """A child whose socket closes without a word (its owner killed) exits by itself."""
    ep = EngineProcess(EngineSpec(MODEL, TOKENIZER, device="cpu", dtype="float32", threads=1))
    proc = ep._proc
    ep._conn.close()  # what the owner's death does to the child's socket
    assert proc.wait(30) == 0
    ep._proc = None


def test_the_child_is_a_fresh_interpreter_whatever_the_callers_main(tmp_path):
    """A script without a __main__ guard starts one (multiprocessing's spawn would re-run it)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from kronos_rt.engine_process import EngineProcess, EngineSpec\n"
        f"ep = EngineProcess(EngineSpec({MODEL!r}, {TOKENIZER!r}, device='cpu', threads=1))\n"
        "print('device', ep.device)\n"
        "ep.close()\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(root)), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["device cpu"]

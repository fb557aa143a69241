"""What a user who got something wrong sees: one or two lines, what to do, no traceback;
exit 2 for bad flags or configuration, 1 for runtime failures, 130 for Ctrl-C; --debug (or
KRONOS_RT_DEBUG=1) brings the traceback back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from worker.cli import main
from worker.tools import TAPE
from worker.tools.services import free_port

ROOT = Path(__file__).resolve().parents[3]


def run(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out + err


def short(text: str, *needles: str) -> None:
    """One or two lines, naming what failed; no traceback."""
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.fixture
def dead_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch, tmp_path):
    monkeypatch.delenv("KRONOS_RT_DEBUG", raising=False)
    monkeypatch.setenv("KRONOS_RT_REGISTRY", str(tmp_path / "registry"))


def test_unreachable_broker_replay_and_report_and_tail(capsys, dead_port):
    where = f"127.0.0.1:{dead_port}"
    rc, text = run(capsys, "replay", str(TAPE), "--brokers", where, "--symbol", "X", "--no-progress")
    assert rc == 1
    short(text, f"cannot reach the Kafka broker at {where}", "kronos-rt broker")
    rc, text = run(capsys, "report", "--brokers", where)
    assert rc == 1
    short(text, "kronos-rt report: error: cannot reach the Kafka broker")
    rc, text = run(capsys, "tail", "--brokers", where)
    assert rc == 1
    short(text, "kronos-rt tail: error: cannot reach the Kafka broker")


def test_replay_takes_brokers_from_the_environment(capsys, monkeypatch, dead_port):
    monkeypatch.setenv("KRONOS_RT_BROKERS", f"127.0.0.1:{dead_port}")
    rc, text = run(capsys, "replay", str(TAPE), "--symbol", "X", "--no-progress")
    assert rc == 1
    short(text, f"127.0.0.1:{dead_port}")


def test_worker_gives_up_on_an_absent_broker_with_a_short_message(capsys, redis_url, dead_port):
    rc, text = run(capsys, "worker", "--brokers", f"127.0.0.1:{dead_port}", "--redis", redis_url,
                   "--model", str(ROOT / "tests/fixtures/parity/model"),
                   "--tokenizer", str(ROOT / "tests/fixtures/parity/tokenizer"), "--device", "cpu",
                   "--metrics-port", "0", "--startup-timeout-s", "1", "--log-level", "ERROR",
                   "--lookback", "16", "--min-history", "8", "--max-context", "32")
    assert rc == 1
    short(text, f"127.0.0.1:{dead_port}", "did not answer")


def test_worker_with_redis_refusing_the_password_exits_before_joining(capsys, private_redis, dead_port):
    import redis

    redis.Redis.from_url(private_redis).config_set("requirepass", "right")  # a private server: ours to change
    url = private_redis.replace("redis://", "redis://:wrong@")
    rc, text = run(capsys, "worker", "--brokers", f"127.0.0.1:{dead_port}", "--redis", url,
                   "--model", str(ROOT / "tests/fixtures/parity/model"),
                   "--tokenizer", str(ROOT / "tests/fixtures/parity/tokenizer"), "--device", "cpu",
                   "--metrics-port", "0", "--log-level", "ERROR", "--lookback", "16", "--min-history", "8",
                   "--max-context", "32", "--startup-timeout-s", "20")
    assert rc == 1
    short(text, "Redis", "invalid username-password")
    assert ":wrong@" not in text  # no password in what is printed


@pytest.mark.parametrize("model, needle", [
    ("/no/such/checkpoint", "is neither a directory"),
    ("nosuch@latest", "no model named 'nosuch'"),
    ("nosuch@1.0.0", "nosuch"),
])
def test_worker_model_that_does_not_exist(capsys, model, needle, dead_port):
    rc, text = run(capsys, "worker", "--model", model, "--device", "cpu", "--metrics-port", "0",
                   "--brokers", f"127.0.0.1:{dead_port}", "--log-level", "ERROR", "--startup-timeout-s", "20")
    assert rc == 2
    short(text, needle)


def test_hub_model_offline_without_cache(capsys, monkeypatch, tmp_path, dead_port):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    rc, text = run(capsys, "worker", "--device", "cpu", "--metrics-port", "0", "--log-level", "ERROR",
                   "--startup-timeout-s", "20", "--brokers", f"127.0.0.1:{dead_port}")  # default model: NeoQuasar/Kronos-small
    assert rc == 1
    short(text, "NeoQuasar/Kronos-small", "HF_HUB_OFFLINE")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["worker", "--device", "cuda"],
    ["demo", "--device", "cuda:0"],
    ["bench", "--device", "cuda", "--shapes", "mini"],
])
def test_cuda_without_cuda(capsys, argv):
    rc, text = run(capsys, *argv)
    assert rc == 2
    short(text, "CUDA is not available", "--device cpu")


def test_cuda_without_cuda_in_the_library():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    from kronos_rt.engine import resolve_device

    with pytest.raises(RuntimeError, match="use --device cpu"):
        resolve_device("cuda")


def test_tape_missing_or_without_a_column(capsys, tmp_path):
    rc, text = run(capsys, "replay", str(tmp_path / "nope.csv"), "--no-progress")
    assert rc == 2
    short(text, "nope.csv: no such file")
    bad = tmp_path / "no_close.csv"
    pd.read_csv(TAPE).drop(columns=["close"]).to_csv(bad, index=False)
    rc, text = run(capsys, "replay", str(bad), "--symbol", "X", "--no-progress")
    assert rc == 2
    short(text, "missing columns close")
    notcsv = tmp_path / "notes.csv"
    notcsv.write_text("a,b\n1,2\n3,4,5,6,7\n")
    rc, text = run(capsys, "replay", str(notcsv), "--no-progress")
    assert rc == 2
    short(text, "not a readable CSV tape")


@pytest.mark.parametrize("argv, needle", [
    (["worker", "--lookback", "10", "--min-history", "20"], "--min-history <= --lookback"),
    (["worker", "--quantiles", "abc"], "comma-separated levels"),
    (["replay", str(TAPE), "--symbol", "X", "--speed", "fast"], "--speed 'fast'"),
])
def test_bad_values_exit_2(capsys, argv, needle):
    rc, text = run(capsys, *argv)
    assert rc == 2
    short(text, needle)


def test_bad_environment_value_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("KRONOS_RT_MAX_BATCH", "lots")
    with pytest.raises(SystemExit) as exc:
        main(["worker"])
    assert exc.value.code == 2
    assert "invalid int value: 'lots'" in capsys.readouterr().err


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    rc = main(["--debug", "replay", str(tmp_path / "nope.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "FileNotFoundError" in err
    monkeypatch.setenv("KRONOS_RT_DEBUG", "1")
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "replay", str(tmp_path / "nope.csv")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "nope.csv: no such file" in proc.stderr


def test_ctrl_c_in_the_demo_stops_everything_and_says_so(tmp_path):
    """SIGINT while the demo waits for its first forecasts: exit 130, one line, no traceback,
    no redis-server or broker left behind, no empty run folder."""
    env = dict(os.environ, KRONOS_RT_REGISTRY=str(tmp_path / "registry"), OMP_NUM_THREADS="1")
    env.pop("KRONOS_RT_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "demo", "--symbols", "1", "--bars", "60",
                             "--speed", "50", "--quiet"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "bars of history" in line or not line:
            break
    assert "bars of history" in seen, seen + proc.stderr.read()
    children = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    short(err, "interrupted")
    assert not list((tmp_path / "kronos-rt-demo").glob("*")) if (tmp_path / "kronos-rt-demo").exists() else True
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "left processes behind"


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False

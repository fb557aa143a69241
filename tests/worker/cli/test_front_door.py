"""The rest of the front door: `make` idempotence and the torch build choice (without
installing anything), `kronos-rt broker` and `tail`, the README's subscriber snippet run as
written, KronosPredictor.from_registry, compact reprs, and RANDOM WEIGHTS in the report."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worker.contracts import events
from worker.cli.tail import format_line
from kronos_rt_client.client import parse_forecast
from worker.tools.services import free_port

ROOT = Path(__file__).resolve().parents[3]
PARITY = ROOT / "tests" / "fixtures" / "parity"


# -- make / scripts ------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_installs_once_then_only_runs(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")

    # Under `make test` (CI) the outer make's flags and level would reach this one.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}

    def dry(target: str) -> str:
        return subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True,
                              check=True, env=env).stdout

    first = dry("test")
    assert "-m venv .venv" in first and "install-torch.sh" in first and "pip install -q -e '.[test]'" in first
    assert "-m pytest" in first
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    (tmp_path / ".venv" / ".kronos-rt-installed").touch()
    again = dry("test")
    assert "pip install" not in again and "venv" not in again.split("-m pytest")[0].replace(".venv/bin", "")
    assert "-m pytest" in again
    assert dry("demo").strip().endswith("kronos-rt demo")
    # a changed pyproject.toml reinstalls
    future = time.time() + 5
    os.utime(tmp_path / "pyproject.toml", (future, future))
    assert "pip install -q -e" in dry("demo")


def _fake_python(tmp_path: Path, offline_ok: bool) -> tuple[Path, Path]:
    """A `python` that has no torch, answers pip's offline dry run as told, and logs pip installs."""
    log = tmp_path / "pip.log"
    py = tmp_path / "python"
    py.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exit 1; fi                  # import torch: not installed
case "$*" in *--dry-run*) exit {0 if offline_ok else 1};; *"config list"*) exit 0;; esac
echo "$*" >> {log}
""")
    py.chmod(0o755)
    return py, log


@pytest.mark.parametrize("offline_ok, gpu, expect", [
    (True, False, "--no-index torch==2.13.0"),
    (False, True, "install -q torch==2.13.0"),
    (False, False, "--index-url https://download.pytorch.org/whl/cpu"),
])
def test_install_torch_picks_the_build(tmp_path, offline_ok, gpu, expect):
    py, log = _fake_python(tmp_path, offline_ok)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if gpu:
        smi = bindir / "nvidia-smi"
        smi.write_text("#!/usr/bin/env bash\necho 'GPU 0: H100'\n")
        smi.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PYTHON": str(py), "HOME": str(tmp_path)}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install-torch.sh")], env=env, capture_output=True,
                         text=True, check=True).stdout
    installed = log.read_text()
    assert expect in installed, (out, installed)
    assert installed.count("\n") == 1
    if not gpu and not offline_ok:
        assert "no NVIDIA GPU" in out


# -- reprs, tail lines -----------------------------------------------------------------------------

def _forecast_doc(symbol="600000.SH", as_of="2024-06-18T11:15:00", random_weights=True, close=11.28) -> dict:
    mean = np.tile([11.27, 11.29, 11.26, close, 400.0, 4.5e5], (3, 1))
    return events.build_forecast(
        symbol=symbol, as_of=as_of, interval_s=300,
        horizon_times=[np.datetime64("2024-06-18T11:20:00") + i * np.timedelta64(300, "s") for i in range(3)],
        mean=mean, quantiles={0.1: mean - 0.03, 0.5: mean, 0.9: mean + 0.03}, model_name="demo-random",
        model_version="0.1.0", sampling={"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 2,
                                         "lookback": 96, "pred_len": 3},
        latency_ms={"broker_to_received": 1.0, "queue_wait": 2.0, "inference": 20.0, "total": 24.0},
        topic="bars", partition=0, offset=7, worker_id="w",
        random_weights=random_weights)


def test_forecast_reprs_and_the_tail_line():
    fc = parse_forecast(events.dumps(_forecast_doc()))
    text = repr(fc)
    assert text.startswith("<Forecast 600000.SH as_of=2024-06-18 11:15 next_close=11.28 band=[11.25, 11.31]")
    assert "demo-random@0.1.0" in text and "RANDOM-WEIGHTS" in text and len(text) < 200
    line = format_line(fc)
    assert re.search(r"600000\.SH\s+2024-06-18T11:15:00\s+next close 11\.28\s+\[11\.25, 11\.31\] \(q0\.1-q0\.9\)"
                     r"\s+latency 24 ms\s+demo-random@0\.1\.0  RANDOM WEIGHTS$", line), line

    from kronos_rt.engine import Forecast

    eng = Forecast(mean=np.arange(60, dtype=float).reshape(10, 6), quantiles={0.1: np.zeros((10, 6))})
    assert repr(eng) == "Forecast(steps=10, close=[3, 9, 15, ...], quantiles=[0.1])"


def test_forecast_messages_say_random_weights_and_match_the_schema():
    import json

    import jsonschema

    schema = json.loads((ROOT / "schemas" / "forecast.v1.json").read_text())
    for flag in (True, False):
        doc = _forecast_doc(random_weights=flag)
        jsonschema.validate(doc, schema)
        assert doc["random_weights"] is flag


# -- report --------------------------------------------------------------------------------------

def test_report_marks_random_weights_and_says_when_forecasts_are_missing(tmp_path):
    from worker.tools.report import build_report

    times = [np.datetime64("2024-06-18T11:00:00") + i * np.timedelta64(300, "s") for i in range(8)]
    bars = [{"symbol": "600000.SH", "ts": str(t), "open": 11.0, "high": 11.1, "low": 10.9, "close": 11.0 + i / 100,
             "volume": 1.0} for i, t in enumerate(times)]
    forecasts = [_forecast_doc(as_of=str(t)) for t in times[3:5]]  # the bars imply 5 (from 11:15 on)
    summary = build_report(forecasts, bars, tmp_path / "r")
    text = summary.report_path.read_text()
    assert text.splitlines()[0] == "# kronos-rt replay report: demo-random@0.1.0"
    assert "**RANDOM WEIGHTS**" in text
    assert "**Incomplete**: 2 forecasts of 5 that the bars imply" in text
    assert summary.shortfall == 3 and summary.label == "demo-random@0.1.0 [RANDOM WEIGHTS]"
    summary = build_report(forecasts, bars, tmp_path / "r2", expected=9)
    assert "2 forecasts of 9 expected" in summary.report_path.read_text()


def test_report_plots_carry_titles(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from worker.tools import report

    from matplotlib.figure import Figure

    titles, figure_titles = [], []
    real, real_sup = Axes.set_title, Figure.suptitle
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: (titles.append(t), real(self, t, *a, **k))[1])
    monkeypatch.setattr(Figure, "suptitle",
                        lambda self, t, *a, **k: (figure_titles.append(t), real_sup(self, t, *a, **k))[1])
    times = [np.datetime64("2024-06-18T11:00:00") + i * np.timedelta64(300, "s") for i in range(8)]
    bars = [{"symbol": "600000.SH", "ts": str(t), "open": 11.0, "high": 11.1, "low": 10.9, "close": 11.0,
             "volume": 1.0} for t in times]
    summary = report.build_report([_forecast_doc(as_of=str(t)) for t in times[3:]], bars, tmp_path)
    label = "demo-random@0.1.0 [RANDOM WEIGHTS]"
    # One title per plot, carrying the label: an axes' title, or the figure's for the panels of the
    # forecast chart (whose own titles say symbol @ as_of).
    plot_titles = [t for t in titles if label in t] + figure_titles
    assert len([f for f in summary.files if f.suffix == ".png"]) == len(plot_titles) >= 3
    assert all(label in t for t in figure_titles) and "forecasts.png" in {f.name for f in summary.files}
    assert all(" @ " in t for t in titles if label not in t)


# -- library -------------------------------------------------------------------------------------

def test_predictor_from_registry(tmp_path):
    from kronos_rt import KronosPredictor
    from kronos_rt.registry import Registry, RegistryError

    reg = Registry(tmp_path / "reg")
    reg.import_dirs("parity", PARITY / "model", PARITY / "tokenizer", version="1.0.0")
    predictor = KronosPredictor.from_registry("parity@latest", device="cpu", root=tmp_path / "reg")
    assert predictor.version.version == "1.0.0" and not predictor.version.random_weights
    assert str(predictor.device) == "cpu"
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        KronosPredictor.from_registry("nope@latest", root=tmp_path / "reg")


# -- broker, tail, README snippet (real broker) -------------------------------------------------------

def _wait_for_line(proc, needle: str, timeout: float = 60.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen: {seen}")


@pytest.mark.slow
def test_broker_command_serves_until_ctrl_c():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "broker", "--port", str(port),
                             "--topic", "bars.5m:2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(proc, f"listening on 127.0.0.1:{port}")
        from worker.adapters.kafka import topic_partitions

        assert asyncio.run(topic_partitions(f"127.0.0.1:{port}", ["bars.5m"])) == {"bars.5m": 2}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


def _snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "ForecastClient" in b)


async def _publish_until(broker: str, topic: str, proc, needle: str, timeout: float = 60.0) -> str:
    """Publish fresh forecasts (a new as_of each) until the subprocess prints `needle`."""
    from worker.adapters.kafka import make_producer

    producer = make_producer(broker, client_id="front-door-test")
    await producer.start()
    out = ""
    loop = asyncio.get_running_loop()
    reader = loop.run_in_executor(None, _wait_for_line, proc, needle, timeout)
    try:
        i = 0
        while not reader.done():
            as_of = str(np.datetime64("2024-06-18T11:15:00") + i * np.timedelta64(300, "s"))
            await producer.send_and_wait(topic, key=b"600000.SH", value=events.dumps(_forecast_doc(as_of=as_of)))
            i += 1
            await asyncio.sleep(0.3)
        out = await reader
    finally:
        await producer.stop()
    return out


@pytest.mark.slow
async def test_readme_snippet_runs_as_written(broker, tmp_path):
    from worker.adapters.kafka import ensure_topics

    topic = f"forecasts.readme.{os.getpid()}.{int(time.time())}"
    await ensure_topics(broker, {topic: 1})
    code = _snippet().replace('"127.0.0.1:9092"', f'"{broker}"').replace('"forecasts.5m"', f'"{topic}"')
    assert broker in code and "asyncio.run(main())" in code
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, "-u", str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out = await _publish_until(broker, topic, proc, "<Forecast 600000.SH")
        assert "next_close=11.28" in out
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_tail_prints_one_line_per_forecast(broker):
    from worker.adapters.kafka import ensure_topics

    topic = f"forecasts.tail.{os.getpid()}.{int(time.time())}"
    await ensure_topics(broker, {topic: 1})
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "tail", "--brokers", broker,
                             "--topic", topic, "--count", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out = await _publish_until(broker, topic, proc, "next close 11.28")
        assert "RANDOM WEIGHTS" in out and "latency 24 ms" in out
        from worker.adapters.kafka import make_producer

        producer = make_producer(broker, client_id="front-door-test")
        await producer.start()
        try:  # a second, new forecast: --count 2 then ends the command
            doc = _forecast_doc(as_of="2030-01-02T09:35:00")
            await producer.send_and_wait(topic, key=b"600000.SH", value=events.dumps(doc))
        finally:
            await producer.stop()
        assert proc.wait(30) == 0  # --count 2: it stops by itself
    finally:
        proc.kill()
        proc.wait()

"""`kronos-rt view` as a user runs it: bad flags, an unreachable broker, a real run stopped by Ctrl-C."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import unique_topic
from worker.cli import main as cli_main


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port 70000: must be 0..65535"), (["--max-bars", "0"], "--max-bars must be >= 1"),
    (["--history", "-1"], "--history must be >= 0"), (["--forecasts-topic", ""], "must not be empty"),
])
def test_bad_flags_exit_2(flags, message, capsys):
    assert cli_main(["view", *flags]) == 2
    assert message in capsys.readouterr().err


def test_unreachable_broker_exits_1(capsys):
    assert cli_main(["view", "--brokers", "127.0.0.1:1", "--port", "0"]) == 1
    assert "cannot reach the Kafka broker at 127.0.0.1:1" in capsys.readouterr().err


def test_serves_until_ctrl_c(broker):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "view", "--brokers", broker, "--port", "0",
                             "--bars-topic", unique_topic("vb"), "--forecasts-topic", unique_topic("vf")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"kronos-rt view: (http://\S+)", line).group(1)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"lightweight-charts" in r.read()
        with urllib.request.urlopen(url + "api/stats", timeout=10) as r:
            assert b'"symbols":0' in r.read()
    finally:
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "waiting for topics" in err and "Traceback" not in err

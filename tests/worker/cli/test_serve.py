"""kronos-rt serve: its flags (the worker's model/sampling/batching/HTTP ones, --host/--port), env fallbacks."""
import argparse

from worker.cli import serve


def _parse(argv, monkeypatch=None):
    p = argparse.ArgumentParser()
    serve.configure(p)
    return serve.settings_from(p.parse_args(argv))


def test_flags_and_defaults():
    s = _parse(["--model", "m", "--host", "0.0.0.0", "--port", "0", "--max-batch", "8", "--api-token", "t",
                "--http-max-bars", "300", "--top-k", "1"])
    assert (s.model, s.http_host, s.http_port, s.max_batch, s.api_token, s.http_max_bars, s.top_k) == \
        ("m", "0.0.0.0", 0, 8, "t", 300, 1)
    d = _parse([])
    assert d.http_port == 8000 and d.http_host == "127.0.0.1" and d.api_token == "" and d.http_strict == 1


def test_environment(monkeypatch):
    monkeypatch.setenv("KRONOS_RT_API_TOKEN", "from-env")
    monkeypatch.setenv("KRONOS_RT_PORT", "9123")
    s = _parse([])
    assert s.api_token == "from-env" and s.http_port == 9123

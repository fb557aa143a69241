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


def test_http_limits_are_checked_at_start_up_with_the_flag_named():
    import pytest

    from worker.config import ConfigError

    bad = [(["--port", "70000"], "--http-port"), (["--http-max-queue", "0"], "--http-max-queue"),
           (["--http-max-bars", "0"], "--http-max-bars"), (["--http-max-series", "-1"], "--http-max-series"),
           (["--http-max-body-kb", "0"], "--http-max-body-kb"), (["--http-timeout-s", "0"], "--http-timeout-s"),
           (["--http-strict", "2"], "--http-strict"),
           (["--pred-len", "40", "--http-max-pred-len", "32"], "--http-max-pred-len")]
    for argv, flag in bad:
        with pytest.raises(ConfigError, match=flag):
            _parse(argv)
    assert _parse(["--http-max-pred-len", "12", "--pred-len", "12"]).http_max_pred_len == 12


def test_model_poll_flag_for_following_latest():
    assert _parse(["--model", "par@latest", "--model-poll-s", "0.5"]).model_poll_s == 0.5

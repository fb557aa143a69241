"""Secured Kafka (issue 10, item 6): the --security-protocol / --sasl-* / --ssl-* flags of every
command, the client arguments worker/adapters/kafka.py builds from them, and end to end over TLS
(with client certificates) and SASL_SSL/PLAIN through tests/worker/adapters/kafka_front.py."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.worker.adapters.kafka_front import KafkaFront, make_pki, server_tls, tansu_advertising
from worker.adapters import kafka
from worker.adapters import security
from worker.errors import ConfigError
from kronos_rt_client.security import KafkaSecurity, client_kwargs
from worker.tools.services import free_port

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "s3cr3t-Pa55-7f9c"  # searched for in logs, metrics, forecasts and the command line


@pytest.fixture(autouse=True)
def secrets_forgotten_after():
    """redact_in_logs lasts for the process: a test password such as "p" would otherwise be
    starred out of every later test's log lines."""
    from kronos_rt_client import security as client_security

    before = set(client_security._REDACT.secrets)
    yield
    client_security._REDACT.secrets.intersection_update(before)


@pytest.fixture(autouse=True)
def no_kronos_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("KRONOS_RT_"):
            monkeypatch.delenv(name)


def parse(command: str, argv: list[str], environ: dict | None = None) -> argparse.Namespace:
    """argv through the real `kronos-rt COMMAND` parser, KRONOS_RT_* from environ (set in os.environ,
    as the worker's parser reads it there)."""
    import importlib

    from worker.cli import COMMANDS
    from worker.config import apply_env

    saved = {k: os.environ.get(k) for k in environ or {}}
    os.environ.update(environ or {})
    try:
        p = argparse.ArgumentParser()
        importlib.import_module(COMMANDS[command][0]).configure(p)
        apply_env(p)
        return p.parse_args(argv)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("command,extra", [("worker", []), ("replay", ["tape.csv"]), ("report", []), ("tail", [])])
def test_every_kafka_command_takes_the_same_security_flags(command, extra, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    args = parse(command, extra + ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                                   "--sasl-username", "alice", "--ssl-cafile", str(ca)],
                 {"KRONOS_RT_SASL_PASSWORD": PASSWORD})
    sec = security.from_args(args, environ={})
    assert sec == KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "alice", PASSWORD, str(ca))
    if command == "worker":
        from worker.config import from_args

        settings = from_args(args)  # reads *_FILE variables from os.environ: none here
        assert settings.kafka_security == sec
        assert PASSWORD not in repr(settings)


def test_secrets_from_files_and_the_protocol_they_imply(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")  # a trailing newline, as `echo` writes it, is not part of it
    user = tmp_path / "user"
    user.write_text("bob")
    env = {"KRONOS_RT_SASL_PASSWORD_FILE": str(pw), "KRONOS_RT_SASL_USERNAME_FILE": str(user)}
    sec = security.from_args(parse("tail", [], env), environ=env)
    assert (sec.security_protocol, sec.sasl_username, sec.sasl_password, sec.mechanism) == \
        ("SASL_SSL", "bob", PASSWORD, "PLAIN")  # SASL without a word on TLS: never in the clear
    assert PASSWORD not in repr(sec) and PASSWORD not in sec.describe()
    # A flag or KRONOS_RT_SASL_PASSWORD wins over the file.
    assert security.from_args(parse("tail", ["--sasl-password", "x"], env), environ=env).sasl_password == "x"
    assert security.from_args(parse("tail", []), environ={}) == KafkaSecurity()  # PLAINTEXT
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert security.from_args(parse("tail", ["--ssl-cafile", str(ca)]), environ={}).security_protocol == "SSL"


@pytest.mark.parametrize("argv,env,message", [
    (["--security-protocol", "SASL_SSL"], {}, "needs --sasl-username"),
    (["--sasl-username", "a", "--security-protocol", "SSL"], {"KRONOS_RT_SASL_PASSWORD": "p"}, "need --security-protocol"),
    (["--ssl-certfile", "/nonexistent/cert.pem", "--ssl-keyfile", "/nonexistent/k"], {}, "no such file"),
    (["--ssl-cafile", "/nonexistent/ca.pem"], {}, "no such file"),
    ([], {"KRONOS_RT_SASL_USERNAME": "a", "KRONOS_RT_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read"),
])
def test_bad_security_settings_are_config_errors(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        security.from_args(parse("replay", ["tape.csv"] + argv, env), environ=env)


def test_bad_choices_are_refused_by_the_parser():
    with pytest.raises(SystemExit):
        parse("worker", ["--security-protocol", "TLS"])
    with pytest.raises(ConfigError):
        parse("worker", [], {"KRONOS_RT_SASL_MECHANISM": "GSSAPI"})


async def test_client_kwargs(tmp_path):
    pki = make_pki(tmp_path)
    assert client_kwargs("b:9092") == {"bootstrap_servers": "b:9092"}
    assert client_kwargs("b:9092", KafkaSecurity()) == {"bootstrap_servers": "b:9092"}
    kw = client_kwargs("b:9093", KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "u", PASSWORD, str(pki.ca),
                                                     str(pki.client_cert), str(pki.client_key)))
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("u", PASSWORD)
    ctx = kw["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    plain = client_kwargs("b:9092", KafkaSecurity("SASL_PLAINTEXT", None, "u", "p"))
    assert "ssl_context" not in plain and plain["sasl_mechanism"] == "PLAIN"
    # Every client kind accepts them (aiokafka checks its arguments in the constructors).
    for make in (lambda: kafka.make_producer("b:9093", security=KafkaSecurity("SSL", ssl_cafile=str(pki.ca))),
                 lambda: kafka.make_consumer("b:9093", "t", security=KafkaSecurity("SSL", ssl_cafile=str(pki.ca))),
                 lambda: kafka.make_admin("b:9093", KafkaSecurity("SASL_SSL", "PLAIN", "u", "p"))):
        assert make() is not None


def test_metrics_host_is_a_worker_flag():
    from worker.config import from_args

    assert from_args(parse("worker", ["--metrics-host", "127.0.0.1"])).metrics_host == "127.0.0.1"
    assert from_args(parse("worker", [], {"KRONOS_RT_METRICS_HOST": "::1"})).metrics_host == "::1"


# --------------------------------------------------------------------------- end to end


async def _forecasts(bootstrap: str, topic: str, sec: KafkaSecurity, n: int, timeout: float = 60.0) -> list:
    """n forecasts of `topic` read from the beginning by the subscriber client, secured."""
    from kronos_rt_client.client import ForecastClient

    got = []
    async with ForecastClient(bootstrap, topic=topic, from_beginning=True, security=sec) as client:
        async def take():
            async for fc in client:
                got.append(fc)
                if len(got) >= n:
                    return
        await asyncio.wait_for(take(), timeout)
    return got


async def _refused(bootstrap: str, sec: KafkaSecurity | None) -> bool:
    """Does the front refuse a client with these settings (no metadata within a few seconds)?"""
    admin = kafka.make_admin(bootstrap, sec, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 8)
    except Exception:  # noqa: BLE001 - KafkaConnectionError, an auth error or the timeout
        return True
    finally:
        await admin.close()
    return False


@pytest.mark.slow
async def test_tls_end_to_end_with_client_certificates(tmp_path, redis_url, redis_prefix):
    from tests.worker.streams import TAPE, expected_keys, make_settings, names, running_worker
    from worker.tools.replay import prepare, replay
    from worker.tools.report import read_topic

    pki = make_pki(tmp_path / "pki")
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    sec = KafkaSecurity("SSL", ssl_cafile=str(pki.ca), ssl_certfile=str(pki.client_cert),
                        ssl_keyfile=str(pki.client_key))
    with tansu_advertising(port, tmp_path / "tansu.log") as upstream:
        front = await KafkaFront(upstream, port, tls=server_tls(pki, require_client_cert=True)).start()
        try:
            topics = names("tls")
            await kafka.ensure_topics(bootstrap, {topics["bars_topic"]: 1}, security=sec)
            rows = prepare(TAPE, fanout=2, limit=40)
            want = expected_keys(rows)
            settings = make_settings(bootstrap, redis_url, redis_prefix, topics, kafka_security=sec)
            async with running_worker(settings):
                assert (await replay(rows, bootstrap, topics["bars_topic"], security=sec)).bars == 80
                got = await _forecasts(bootstrap, topics["forecasts_topic"], sec, len(want))
            assert {(f.symbol, f.as_of_raw) for f in got} == want
            reported, bad = await read_topic(bootstrap, topics["forecasts_topic"], 30, sec)  # `kronos-rt report`
            assert len(reported) == len(want) and bad == 0

            # The front takes TLS with a certificate of its CA only.
            assert await _refused(bootstrap, None)  # PLAINTEXT
            assert await _refused(bootstrap, KafkaSecurity("SSL", ssl_cafile=str(pki.ca)))  # no client certificate
            other = make_pki(tmp_path / "other")
            assert await _refused(bootstrap, KafkaSecurity("SSL", ssl_cafile=str(other.ca),
                                                           ssl_certfile=str(pki.client_cert),
                                                           ssl_keyfile=str(pki.client_key)))  # unknown server CA
        finally:
            await front.stop()


@pytest.mark.slow
async def test_sasl_ssl_worker_process_keeps_its_password_out_of_ps_logs_metrics_and_forecasts(
        tmp_path, redis_url, redis_prefix):
    from tests.worker.streams import MODEL, TAPE, TOKENIZER, expected_keys, names
    from worker.tools.replay import prepare, replay
    from worker.tools.report import read_topic

    pki = make_pki(tmp_path / "pki")
    port, metrics_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    pw_file = tmp_path / "kafka-password"
    pw_file.write_text(PASSWORD)
    sec = KafkaSecurity("SASL_SSL", "PLAIN", "alice", PASSWORD, str(pki.ca))
    topics = names("sasl")
    with tansu_advertising(port, tmp_path / "tansu.log") as upstream:
        front = await KafkaFront(upstream, port, tls=server_tls(pki, require_client_cert=False),
                                 users={"alice": PASSWORD}).start()
        log_path = tmp_path / "worker.log"
        proc = None
        try:
            await kafka.ensure_topics(bootstrap, {topics["bars_topic"]: 1}, security=sec)
            env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_RT_")}
            env.update(KRONOS_RT_SASL_USERNAME="alice", KRONOS_RT_SASL_PASSWORD_FILE=str(pw_file),
                       KRONOS_RT_SSL_CAFILE=str(pki.ca), OMP_NUM_THREADS="1")
            argv = [sys.executable, "-m", "worker.cli", "worker", "--log-level", "DEBUG",
                    "--brokers", bootstrap, "--redis", redis_url, "--redis-prefix", redis_prefix,
                    "--bars-topic", topics["bars_topic"], "--forecasts-topic", topics["forecasts_topic"],
                    "--dlq-topic", topics["dlq_topic"], "--group", topics["group"],
                    "--model", str(MODEL), "--tokenizer", str(TOKENIZER), "--lookback", "64", "--min-history", "32",
                    "--pred-len", "4", "--max-context", "128", "--top-k", "1", "--top-p", "1.0",
                    "--device", "cpu", "--dtype", "float32", "--session-timeout-ms", "3000",
                    "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            rows = prepare(TAPE, fanout=2, limit=40)
            want = expected_keys(rows)
            await replay(rows, bootstrap, topics["bars_topic"], security=sec)
            got = await _forecasts(bootstrap, topics["forecasts_topic"], sec, len(want), timeout=90)
            assert {(f.symbol, f.as_of_raw) for f in got} == want
            assert "alice" in front.authenticated and not front.refused

            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert "--brokers" in cmdline and PASSWORD not in cmdline  # what `ps` shows
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert "kronos" in metrics and PASSWORD not in metrics
            reported, _ = await read_topic(bootstrap, topics["forecasts_topic"], 30, sec)
            assert len(reported) >= len(want) and PASSWORD not in json.dumps(reported)

            wrong = KafkaSecurity("SASL_SSL", "PLAIN", "alice", "not-" + PASSWORD, str(pki.ca))
            assert await _refused(bootstrap, wrong) and front.refused == ["alice"]
        finally:
            if proc is not None:
                proc.terminate()
                try:  # waited for off the loop: the front runs on it, and the worker drains through it
                    assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60) == 0
                finally:
                    if proc.poll() is None:
                        proc.kill()
            await front.stop()
    text = log_path.read_text(errors="replace")
    assert "consuming" in text and "SASL_SSL as alice" in text
    assert PASSWORD not in text  # DEBUG logs of the worker and aiokafka


def test_the_password_is_redacted_from_aiokafka_debug_logs(caplog):
    client_kwargs("b:9092", KafkaSecurity("SASL_SSL", "PLAIN", "u", PASSWORD))
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        logging.getLogger("aiokafka.conn").debug("Request to %s: %s", "b:9092",
                                                 f"SaslAuthenticateRequest_v1(auth_bytes=b'\\x00u\\x00{PASSWORD}')")
    assert caplog.records and PASSWORD not in caplog.text and "***" in caplog.text

"""Secured Kafka: the connection flags every command that talks to the broker shares
(worker, replay, report, tail and the subscriber client), defined once here.

    --security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL
    --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512, --sasl-username, --sasl-password
    --ssl-cafile, --ssl-certfile, --ssl-keyfile

Each also comes from the environment (KRONOS_RT_SASL_PASSWORD, ...), and the secrets from
a file named by KRONOS_RT_<FLAG>_FILE (KRONOS_RT_SASL_PASSWORD_FILE=/run/secrets/kafka: a
Docker or Kubernetes secret). A password on the command line is visible to every user of
the machine through `ps`; from the environment or a file it is not. The password is never
part of a repr, a log line, a metric or a forecast. KafkaSecurity itself (its checks, its aiokafka
arguments, keeping the password out of logs) is kronos_rt_client/security.py: the
subscriber client needs it without the service.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from kronos_rt_client.security import MECHANISMS, PROTOCOLS, KafkaSecurity
from worker.errors import ConfigError

SECRET_FIELDS = ("sasl_username", "sasl_password")  # also read from KRONOS_RT_<FLAG>_FILE

HELP = {
    "security_protocol": f"how to talk to the brokers: {', '.join(PROTOCOLS)} (default: PLAINTEXT; SSL when "
                         "--ssl-cafile or --ssl-certfile is given; SASL_SSL when --sasl-username is)",
    "sasl_mechanism": f"SASL mechanism: {', '.join(MECHANISMS)} (default: PLAIN with SASL_*)",
    "sasl_username": "SASL user name (or from the file named by KRONOS_RT_SASL_USERNAME_FILE)",
    "sasl_password": "SASL password; prefer KRONOS_RT_SASL_PASSWORD or a file named by "
                     "KRONOS_RT_SASL_PASSWORD_FILE: a command-line password is visible to `ps`",
    "ssl_cafile": "CA bundle (PEM) that signed the brokers' certificates (default: the system's)",
    "ssl_certfile": "client certificate (PEM) for brokers that require mutual TLS",
    "ssl_keyfile": "private key (PEM) of --ssl-certfile",
}


def add_args(parser: argparse.ArgumentParser) -> None:
    """The security flags, for any command that connects to Kafka (values left None when not
    given, so from_args can tell them from the defaults)."""
    group = parser.add_argument_group("Kafka security")
    for f in fields(KafkaSecurity):
        choices = PROTOCOLS if f.name == "security_protocol" else MECHANISMS if f.name == "sasl_mechanism" else None
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, choices=choices,
                           metavar=f.name.upper(), help=HELP[f.name])


def _env_file(name: str, environ) -> str | None:
    var = f"KRONOS_RT_{name.upper()}_FILE"
    path = environ.get(var)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{var}={path}: cannot read it ({exc.strerror or exc})") from None


def from_args(args: argparse.Namespace, environ=None) -> KafkaSecurity:
    """KafkaSecurity from parsed flags (flags and KRONOS_RT_* values, then *_FILE secrets);
    the protocol defaults to what the other flags imply."""
    env = os.environ if environ is None else environ
    given = {f.name: getattr(args, f.name, None) for f in fields(KafkaSecurity)}
    for name in SECRET_FIELDS:
        if given[name] is None:
            given[name] = _env_file(name, env)
    if given["security_protocol"] is None:
        sasl = given["sasl_username"] is not None or given["sasl_mechanism"] is not None
        tls = any(given[n] for n in ("ssl_cafile", "ssl_certfile"))
        # SASL without a word on TLS means SASL_SSL (system CAs): a password is not sent in the clear
        # unless --security-protocol SASL_PLAINTEXT says so.
        given["security_protocol"] = "SASL_SSL" if sasl else ("SSL" if tls else "PLAINTEXT")
    try:
        return KafkaSecurity(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:  # a flag's value: exit 2 with its message
        raise ConfigError(str(exc)) from None

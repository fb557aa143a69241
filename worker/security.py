"""Secured Kafka: the connection flags every command that talks to the broker shares
(worker, replay, report, tail and the subscriber client), defined once here.

    --security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL
    --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512, --sasl-username, --sasl-password
    --ssl-cafile, --ssl-certfile, --ssl-keyfile

Each also comes from the environment (KRONOS_RT_SASL_PASSWORD, ...), and the secrets from
a file named by KRONOS_RT_<FLAG>_FILE (KRONOS_RT_SASL_PASSWORD_FILE=/run/secrets/kafka: a
Docker or Kubernetes secret). A password on the command line is visible to every user of
the machine through `ps`; from the environment or a file it is not. The password is never
part of a repr, a log line, a metric or a forecast. worker/kafka.py turns a KafkaSecurity
into aiokafka client arguments (kafka.client_kwargs).
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field, fields

from worker.errors import ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
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


@dataclass(frozen=True)
class KafkaSecurity:
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never in a repr or a log line
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self):
        if self.security_protocol not in PROTOCOLS:
            raise ConfigError(f"--security-protocol {self.security_protocol!r}: choose from {', '.join(PROTOCOLS)}")
        sasl = self.security_protocol.startswith("SASL_")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in MECHANISMS:
            raise ConfigError(f"--sasl-mechanism {self.sasl_mechanism!r}: choose from {', '.join(MECHANISMS)}")
        if sasl and not (self.sasl_username and self.sasl_password is not None):
            raise ConfigError(f"--security-protocol {self.security_protocol} needs --sasl-username and a password "
                              "(KRONOS_RT_SASL_PASSWORD or KRONOS_RT_SASL_PASSWORD_FILE)")
        if not sasl and (self.sasl_username or self.sasl_mechanism):
            raise ConfigError(f"--sasl-* flags need --security-protocol SASL_SSL or SASL_PLAINTEXT, "
                              f"not {self.security_protocol}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"--{name.replace('_', '-')} {path}: no such file")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def mechanism(self) -> str:
        return self.sasl_mechanism or "PLAIN"

    def describe(self) -> str:
        """For logs: the protocol and who, never the password."""
        who = f" as {self.sasl_username} ({self.mechanism})" if self.security_protocol.startswith("SASL_") else ""
        return self.security_protocol + who


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
    return KafkaSecurity(**{k: v for k, v in given.items() if v is not None})


class _Redact(logging.Filter):
    """Replaces the secrets in a log record's message: aiokafka logs each request at DEBUG,
    the SASL/PLAIN token with the password in it included."""

    def __init__(self):
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - a malformed record is logging's own business
                return True
            if any(s in text for s in self.secrets):
                for s in self.secrets:
                    text = text.replace(s, "***")
                record.msg, record.args = text, None
        return True


_REDACT = _Redact()


def redact_in_logs(secret: str | None) -> None:
    """Keep `secret` out of every log line from now on: in aiokafka's loggers (where the
    SASL token is logged) and in every handler of the root logger. Idempotent."""
    if not secret:
        return
    _REDACT.secrets.add(secret)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.client"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
    for handler in logging.getLogger().handlers:
        if _REDACT not in handler.filters:
            handler.addFilter(_REDACT)

"""Kafka connection security for every kronos-rt client: TLS and SASL settings, checked once,
turned into aiokafka keyword arguments; the password kept out of reprs and log lines.

The service's flags and environment variables for these (--security-protocol, ...,
KRONOS_RT_SASL_PASSWORD_FILE) are worker/adapters/security.py; a subscriber builds a
KafkaSecurity itself. Imports only the standard library (aiokafka is the caller's).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


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
            raise ValueError(f"--security-protocol {self.security_protocol!r}: choose from {', '.join(PROTOCOLS)}")
        sasl = self.security_protocol.startswith("SASL_")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in MECHANISMS:
            raise ValueError(f"--sasl-mechanism {self.sasl_mechanism!r}: choose from {', '.join(MECHANISMS)}")
        if sasl and not (self.sasl_username and self.sasl_password is not None):
            raise ValueError(f"--security-protocol {self.security_protocol} needs --sasl-username and a password "
                              "(KRONOS_RT_SASL_PASSWORD or KRONOS_RT_SASL_PASSWORD_FILE)")
        if not sasl and (self.sasl_username or self.sasl_mechanism):
            raise ValueError(f"--sasl-* flags need --security-protocol SASL_SSL or SASL_PLAINTEXT, "
                              f"not {self.security_protocol}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ValueError(f"--{name.replace('_', '-')} {path}: no such file")

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


def client_kwargs(brokers: str, security=None) -> dict:
    """bootstrap_servers plus the TLS/SASL settings of a KafkaSecurity: what
    every aiokafka consumer, producer and admin client of kronos-rt is built with."""
    kw: dict = {"bootstrap_servers": brokers}
    if security is None or security.security_protocol == "PLAINTEXT":
        return kw
    kw["security_protocol"] = security.security_protocol
    if security.tls:
        import ssl

        # Verifies the broker's certificate and host name (system CAs unless --ssl-cafile).
        context = ssl.create_default_context(cafile=security.ssl_cafile)
        if security.ssl_certfile:
            context.load_cert_chain(security.ssl_certfile, security.ssl_keyfile)
        kw["ssl_context"] = context
    if security.security_protocol.startswith("SASL_"):
        redact_in_logs(security.sasl_password)  # aiokafka logs the PLAIN token at DEBUG
        kw.update(sasl_mechanism=security.mechanism, sasl_plain_username=security.sasl_username,
                  sasl_plain_password=security.sasl_password)
    return kw


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

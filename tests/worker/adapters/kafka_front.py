"""A TLS and SASL/PLAIN front for the Tansu test broker, for tests of secured Kafka.

The Tansu binary the tests use (0.6.0) takes --cert/--key but serves no TLS handshake, and
keeps SASL users in its storage. So the tests put this front before it: Tansu listens on a
private port and advertises the front's, every client connection (bootstrap, then each
broker connection from the metadata) goes through the front, which terminates TLS (and
can require a client certificate) and answers the SASL handshake itself (PLAIN against a
user table) before it passes bytes through. What crosses the front is the real Kafka
protocol of aiokafka's TLS and SASL code; only the broker side is stood in for.

Also: throwaway PKI (a CA, a server certificate for 127.0.0.1/localhost, a client
certificate) made with the `cryptography` package.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from worker.tools.services import EmbeddedBroker, free_port

SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
ILLEGAL_SASL_STATE, UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 34, 33, 58


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, key, issuer, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(path: Path, cert=None, key=None) -> Path:
        if cert is not None:
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(name("kronos-rt test CA"), ca_key, name("kronos-rt test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = build(name("localhost"), server_key, ca.subject, ca_key,
                   san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = build(name("kronos-rt worker"), client_key, ca.subject, ca_key)
    folder.mkdir(parents=True, exist_ok=True)
    return Pki(write(folder / "ca.pem", ca), write(folder / "server.pem", server),
               write(folder / "server.key", key=server_key), write(folder / "client.pem", client),
               write(folder / "client.key", key=client_key))


class KafkaFront:
    """An asyncio server on 127.0.0.1:port in front of a Kafka-protocol broker."""

    def __init__(self, upstream_port: int, port: int, *, tls: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None):
        self.upstream_port, self.port, self.tls, self.users = upstream_port, port, tls, users
        self.authenticated: list[str] = []
        self.refused: list[str] = []
        self._server = None
        self._tasks: set = set()

    async def start(self) -> "KafkaFront":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader, writer) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            if self.users is not None and not await self._sasl(reader, writer):
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def _sasl(self, reader, writer) -> bool:
        """Forward requests until the client has authenticated; answer SaslHandshake and
        SaslAuthenticate here. Any other request first: refused, as a SASL broker does."""
        upstream = None
        mechanism = None
        raw_token = False  # SaslHandshake v0: the PLAIN token follows as a bare frame
        try:
            while True:
                frame = await _read_frame(reader)
                if raw_token:
                    _, user, password = frame.split(b"\0")
                    ok = self.users.get(user.decode()) == password.decode()
                    (self.authenticated if ok else self.refused).append(user.decode())
                    if ok:
                        _write_frame(writer, b"")
                        await writer.drain()
                    return ok
                api_key, api_version, correlation = struct.unpack(">hhi", frame[:8])
                body = frame[10 + max(0, struct.unpack(">h", frame[8:10])[0]):]
                if api_key == SASL_HANDSHAKE:
                    (n,) = struct.unpack(">h", body[:2])
                    mechanism = body[2:2 + n].decode()
                    error = 0 if mechanism == "PLAIN" else UNSUPPORTED_SASL_MECHANISM
                    _write_frame(writer, struct.pack(">ihi", correlation, error, 1) + _string("PLAIN"))
                    if error:
                        return False
                    raw_token = api_version == 0
                elif api_key == SASL_AUTHENTICATE and mechanism == "PLAIN":
                    (n,) = struct.unpack(">i", body[:4])
                    _, user, password = body[4:4 + n].split(b"\0")
                    ok = self.users.get(user.decode()) == password.decode()
                    (self.authenticated if ok else self.refused).append(user.decode())
                    message = b"" if ok else b"Authentication failed: invalid credentials"
                    reply = struct.pack(">ih", correlation, 0 if ok else SASL_AUTHENTICATION_FAILED)
                    reply += (struct.pack(">h", -1) if ok else _string(message.decode())) + struct.pack(">i", 0)
                    if api_version >= 1:
                        reply += struct.pack(">q", 0)  # session_lifetime_ms
                    _write_frame(writer, reply)
                    await writer.drain()
                    return ok
                elif api_key == 18:  # ApiVersions: the broker's own answer
                    if upstream is None:
                        upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                    _write_frame(upstream[1], frame)
                    _write_frame(writer, await _read_frame(upstream[0]))
                else:
                    return False  # not authenticated: the connection is closed
                await writer.drain()
        finally:
            if upstream is not None:
                upstream[1].close()


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


async def _read_frame(reader) -> bytes:
    (n,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(n)


def _write_frame(writer, payload: bytes) -> None:
    writer.write(struct.pack(">i", len(payload)) + payload)


async def _pipe(reader, writer) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.contextmanager
def tansu_advertising(front_port: int, log_path: Path):
    """A Tansu broker on a private port that tells clients to connect to front_port."""
    port = free_port()
    cmd = [EmbeddedBroker.binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
           "--advertised-listener-url", f"tcp://127.0.0.1:{front_port}", "--storage-engine", "memory://tansu/"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Tansu did not start: {log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def server_tls(pki: Pki, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca)
    return ctx

"""Every Redis client of kronos-rt is made here: one URL names a single server, a primary
watched by Sentinel, or a Redis Cluster.

    redis://[user:password@]host:port[/db]          one server (also rediss://, unix://)
    redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/db]
    redis+cluster://[user:password@]host:port[,host:port...]    (seed nodes)
    rediss+sentinel://..., rediss+cluster://...     the same over TLS

The clients are redis-py's own (asyncio `Sentinel.master_for`, `RedisCluster`; their sync
twins for the commands that use sync Redis): Sentinel finds the primary and follows a
failover, the Cluster client routes each key to its slot's master and retries MOVED/ASK.
The password in the URL goes to the data nodes; sentinels that want one of their own
get it from KRONOS_RT_REDIS_SENTINEL_PASSWORD, a file named by
KRONOS_RT_REDIS_SENTINEL_PASSWORD_FILE, or `?sentinel_password=`. TLS options
(`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`) ride in the query string.

Lua scripts on a Cluster: a cluster pipeline does not load the scripts it runs (a plain
one does), so `register_script` here remembers them and `execute` loads them on every
primary it has not seen yet (a replica just promoted knows none) before it sends a
pipeline. `check_slots` is the start-up check that a key layout keeps each script's
keys in one slot.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from worker.errors import ConfigError, hide_password

SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"
FORMS = ("redis://host:port/db, rediss://..., unix:///path.sock, "
         "redis+sentinel://host:port[,host:port...]/MASTER_NAME[/db], "
         "redis+cluster://host:port[,host:port...] (rediss+sentinel://, rediss+cluster:// for TLS)")
_SCHEMES = {"redis": SINGLE, "rediss": SINGLE, "unix": SINGLE, "redis+sentinel": SENTINEL,
            "rediss+sentinel": SENTINEL, "redis+cluster": CLUSTER, "rediss+cluster": CLUSTER}
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


@dataclass(frozen=True)
class RedisTarget:
    """What a --redis URL names."""
    topology: str                       # single, sentinel or cluster
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels, or cluster seed nodes
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: dict = field(default_factory=dict)  # from the query string

    def __str__(self) -> str:
        return hide_password(self.url)


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--redis {hide_password(url)}: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def parse(url: str) -> RedisTarget:
    """The topology and nodes a Redis URL names; a URL of another form is a one-line ConfigError."""
    url = str(url).strip()
    scheme, sep, rest = url.partition("://")
    topology = _SCHEMES.get(scheme.lower()) if sep else None
    if topology is None:
        raise ConfigError(f"--redis {hide_password(url)!r} is not a Redis URL kronos-rt knows; use one of: {FORMS}")
    if topology == SINGLE:
        return RedisTarget(SINGLE, url, tls=scheme.lower() == "rediss")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes = tuple(_host_port(h, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ConfigError(f"--redis {hide_password(url)}: name at least one host:port")
    parts = [p for p in path.split("/") if p]
    options = dict(parse_qsl(query))
    unknown = set(options) - set(_TLS_OPTIONS) - {"sentinel_password", "sentinel_username"}
    if unknown:
        raise ConfigError(f"--redis {hide_password(url)}: unknown option(s) {', '.join(sorted(unknown))}")
    tls = scheme.lower().startswith("rediss")
    if topology == SENTINEL:
        if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ConfigError(f"--redis {hide_password(url)}: a Sentinel URL is "
                              "redis+sentinel://host:port[,host:port...]/MASTER_NAME[/db]")
        return RedisTarget(SENTINEL, url, nodes, unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0,
                           username, password, tls, options)
    if parts:
        raise ConfigError(f"--redis {hide_password(url)}: a Cluster URL names seed nodes only "
                          "(redis+cluster://host:port[,host:port...]; a cluster has no db number)")
    return RedisTarget(CLUSTER, url, nodes, "", 0, username, password, tls, options)


def _tls_kwargs(t: RedisTarget) -> dict:
    if not t.tls:
        return {}
    return {"ssl": True, **{k: v for k, v in t.options.items() if k in _TLS_OPTIONS}}


def _sentinel_password(t: RedisTarget) -> str | None:
    if t.options.get("sentinel_password"):
        return t.options["sentinel_password"]
    if os.environ.get("KRONOS_RT_REDIS_SENTINEL_PASSWORD"):
        return os.environ["KRONOS_RT_REDIS_SENTINEL_PASSWORD"]
    path = os.environ.get("KRONOS_RT_REDIS_SENTINEL_PASSWORD_FILE")
    if path:
        try:
            return open(path, encoding="utf-8").read().strip()
        except OSError as exc:
            raise ConfigError(f"KRONOS_RT_REDIS_SENTINEL_PASSWORD_FILE={path}: {exc.strerror}") from exc
    return None


def _sentinel_kwargs(t: RedisTarget, kw: dict) -> dict:
    out = {k: v for k, v in kw.items() if k.startswith("socket_")}
    password = _sentinel_password(t)
    if password:
        out["password"] = password
        if t.options.get("sentinel_username"):
            out["username"] = t.options["sentinel_username"]
    return {**out, **_tls_kwargs(t)}


def connect(url: str | RedisTarget, **kw):
    """An asyncio client for the URL (kw: socket timeouts, decode_responses, ...)."""
    t = url if isinstance(url, RedisTarget) else parse(url)
    if t.topology == SINGLE:
        import redis.asyncio as aioredis

        return aioredis.from_url(t.url, **kw)
    auth = {"username": t.username, "password": t.password}
    if t.topology == SENTINEL:
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(list(t.nodes), sentinel_kwargs=_sentinel_kwargs(t, kw), **_tls_kwargs(t))
        return sentinel.master_for(t.master_name, db=t.db, **auth, **kw)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.nodes], **auth, **_tls_kwargs(t), **kw)


def connect_sync(url: str | RedisTarget, **kw):
    """The same client, synchronous (for commands and tests that use sync Redis)."""
    t = url if isinstance(url, RedisTarget) else parse(url)
    import redis

    if t.topology == SINGLE:
        return redis.Redis.from_url(t.url, **kw)
    auth = {"username": t.username, "password": t.password}
    if t.topology == SENTINEL:
        from redis.sentinel import Sentinel

        sentinel = Sentinel(list(t.nodes), sentinel_kwargs=_sentinel_kwargs(t, kw), **_tls_kwargs(t))
        return sentinel.master_for(t.master_name, db=t.db, **auth, **kw)
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.nodes], **auth, **_tls_kwargs(t), **kw)


async def close(client) -> None:
    """Close the client and, behind Sentinel, its connections to the sentinels."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


def topology(client) -> str:
    """single, sentinel or cluster: what kind of client this is."""
    if hasattr(client, "get_primaries"):
        return CLUSTER
    if hasattr(getattr(client, "connection_pool", None), "sentinel_manager"):
        return SENTINEL
    return SINGLE


def node_in_use(client) -> str:
    """The node(s) in use, as last seen (no round trip): host:port of the server or of
    Sentinel's current primary (empty before the first connection); a Cluster's masters,
    comma separated."""
    kind = topology(client)
    if kind == CLUSTER:
        return ",".join(sorted(f"{n.host}:{n.port}" for n in client.get_primaries()))
    if kind == SENTINEL:
        addr = client.connection_pool.master_address
        return f"{addr[0]}:{addr[1]}" if addr else ""
    kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    return kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


async def ping(client) -> bool:
    """PING the node in use; on a Cluster every master (one down is a Redis not to rely on:
    its slots' windows are out of reach)."""
    if topology(client) == CLUSTER:
        if not client.get_primaries():
            await client.initialize()
        # Each master directly, without the client's retries: a dead one says so at once
        # (/readyz 503 within a tick of the kill), not after the client has given up on it.
        for node in client.get_primaries():
            await node.execute_command("PING")
        return True
    return bool(await client.ping())


# ------------------------------------------------------------------ scripts and slots

# client -> ([script texts], names of the primaries they were loaded on): cluster clients only
_SCRIPTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register_script(client, text: str):
    """client.register_script(text), remembered so `execute` can load it on a Cluster's primaries."""
    if topology(client) == CLUSTER:
        _SCRIPTS.setdefault(client, ([], set()))[0].append(text)
    return client.register_script(text)


async def execute(client, pipe) -> list:
    """pipe.execute() for a pipeline of `client`. On a Cluster the remembered scripts are loaded
    first on every primary that has not had them (a promoted replica, a new master), since a
    cluster pipeline answers NOSCRIPT instead of loading them; a NOSCRIPT all the same (a node
    restarted under its old address) makes the next call load them everywhere again."""
    entry = _SCRIPTS.get(client)
    if entry is None:
        return await pipe.execute()
    from redis.exceptions import NoScriptError

    texts, loaded = entry
    if not client.get_primaries():
        await client.initialize()  # a new client knows no node before its first command
    for node in client.get_primaries():
        if node.name not in loaded:
            for text in texts:
                await client.execute_command("SCRIPT LOAD", text, target_nodes=node)
            loaded.add(node.name)
    try:
        return await pipe.execute()
    except NoScriptError:
        loaded.clear()
        raise


async def delete_prefix(client, prefix: str) -> int:
    """Delete every key under `prefix:` (tools that borrow a shared Redis leave it as they found
    it); a Cluster is scanned on every master and the DELs split per slot. Returns the count."""
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i:i + 1000])
    return len(keys)


def keyslot(key: str) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode())


def check_slots(layouts: dict[str, list[str]]) -> None:
    """Every script's KEYS in one Cluster slot: {what: keys}; ConfigError naming the first that
    is not (checked at start-up, whatever the topology, so a layout is never found out at the first bar)."""
    for what, keys in layouts.items():
        slots = {keyslot(k) for k in keys}
        if len(slots) > 1:
            raise ConfigError(f"the Redis keys of {what} ({', '.join(keys)}) fall in {len(slots)} Cluster slots; "
                              "a script needs them in one: keep '{' and '}' out of --redis-prefix")

"""Shared fixtures: an embedded Kafka-protocol broker, Redis URLs and key prefixes."""
from __future__ import annotations

import uuid

import pytest
import redis

from worker.tools.services import EmbeddedBroker, RedisServer, _redis_ping

SHARED_REDIS_PORT = 6379


def unique_topic(name: str) -> str:
    """A topic name no other test (or earlier run on a long-lived broker) uses."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def broker():
    """Bootstrap string ("127.0.0.1:PORT") of a Tansu broker shared by the session."""
    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture(scope="session")
def redis_url():
    """The shared Redis on 6379 if one answers, else a private one for the session.
    Tests on it must keep to their own key prefix (see redis_prefix) and never flush."""
    if _redis_ping(SHARED_REDIS_PORT):
        yield f"redis://127.0.0.1:{SHARED_REDIS_PORT}/0"
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    prefix = f"kt-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def private_redis():
    """URL of a redis-server owned by this test alone: free to FLUSHALL or stop."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def redis_cluster():
    """A private 3-master Redis Cluster (no replicas), shared by the module's tests: use unique prefixes."""
    from worker.tools.redis_ha import LocalCluster

    with LocalCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_ha():
    """A private 3-master Redis Cluster with a replica per master (1 s node timeout): free to kill."""
    from worker.tools.redis_ha import LocalCluster

    with LocalCluster(masters=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel():
    """A private primary + replica watched by 3 sentinels (1 s down-after): free to kill."""
    from worker.tools.redis_ha import LocalSentinel

    with LocalSentinel() as group:
        yield group

"""The one Redis client of a process, for a single server, a Redis Cluster or a Sentinel-watched master."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeAlias

import redis
from redis._parsers.encoders import Encoder
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from config.redis_url import RedisTarget, parse_redis_url

REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError)
"""What a Redis call may raise when Redis is away: redis-py's cluster errors are not ``RedisError``s."""


def quick_retry() -> Retry:
    """One quick retry, never seconds of backoff: a request handler must answer WeCom fast.

    Replayed writes are harmless because every write script checks its sequence number or its token.
    """
    return Retry(ExponentialBackoff(cap=0.05, base=0.01), 1)


def connect(url: str, timeout: float) -> RedisClient:
    """A lazily connecting client for ``REDIS_URL`` with ``timeout`` seconds per socket operation.

    No health-check interval: its PING would add its own timeout and retry to a callback on a hung
    Redis, while a dead pooled connection fails fast and is retried once anyway.
    """
    target = parse_redis_url(url)
    common = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": quick_retry()}
    if target.kind == "cluster":
        return _cluster(target, timeout)
    if target.kind == "sentinel":
        return _sentinel(target, timeout)
    return redis.Redis.from_url(url, **common)


class LazyCluster:
    """A Redis Cluster client made at its first command: redis-py's asks the nodes for the slot map as
    it is made, and a worker must start (and say so on /readyz) while the cluster is away."""

    def __init__(self, make: Callable[[], RedisCluster]) -> None:
        self._make = make
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> RedisCluster:
        """The cluster client, made now if need be (raises ``RedisClusterException`` while no node answers)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
        return self._client

    def register_script(self, script: str) -> Script:
        """A script bound to this client, without contacting the cluster."""
        return Script(self, script)  # type: ignore[arg-type]  # it only calls what the client has

    def get_encoder(self) -> Encoder:
        """What ``Script`` encodes its source with (redis-py's defaults, as the client's)."""
        return Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


RedisClient: TypeAlias = redis.Redis | LazyCluster
"""What the stores are given: every command they send works on both (multi-key ones within one hash tag)."""


def _cluster(target: RedisTarget, timeout: float) -> LazyCluster:
    # The cluster's own retry (MOVED, a node gone) is as short as a server's: a failover is waited
    # out by the callers (a "busy" frame, the engine's next tick), never inside a request.
    return LazyCluster(lambda: RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],  # type: ignore[no-untyped-call]
        username=target.username, password=target.password, ssl=target.ssl, ssl_ca_certs=target.ssl_ca_certs,
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=quick_retry(),
        require_full_coverage=False,  # slots of a live master keep working while another fails over
    ))


def _sentinel(target: RedisTarget, timeout: float) -> redis.Redis:
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), socket_timeout=timeout, socket_connect_timeout=timeout,
        sentinel_kwargs={"password": target.sentinel_password, "socket_timeout": timeout,
                         "socket_connect_timeout": timeout},
    )
    # The pool asks the sentinels for the master at each new connection, so a promoted replica is
    # found by the first reconnect after a failover; a demoted master's READONLY drops the pool.
    master: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        target.service, db=target.db, username=target.username, password=target.password, ssl=target.ssl,
        **({"ssl_ca_certs": target.ssl_ca_certs} if target.ssl_ca_certs else {}),
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=quick_retry(),
    )
    return master


def is_sentinel(client: RedisClient) -> bool:
    """True for a Sentinel-watched master's client (it has replicas that a failover promotes)."""
    return isinstance(client, redis.Redis) and isinstance(client.connection_pool, SentinelConnectionPool)


def is_cluster(client: RedisClient) -> bool:
    """True for a Redis Cluster client (its keys need hash tags, its pipelines span nodes)."""
    return isinstance(client, LazyCluster)

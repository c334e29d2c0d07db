"""The one Redis client of a process, for a single server, a Redis Cluster or a Sentinel-watched master."""

from __future__ import annotations

from typing import TypeAlias

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from config.redis_url import RedisTarget, parse_redis_url

RedisClient: TypeAlias = redis.Redis | RedisCluster
"""What the stores are given: every command they send works on both (multi-key ones within one hash tag)."""


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


def _cluster(target: RedisTarget, timeout: float) -> RedisCluster:
    # The cluster's own retry (MOVED, a node gone) is as short as a server's: a failover is waited
    # out by the callers (a "busy" frame, the engine's next tick), never inside a request.
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],  # type: ignore[no-untyped-call]
        username=target.username, password=target.password, ssl=target.ssl,
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=quick_retry(),
        require_full_coverage=False,  # slots of a live master keep working while another fails over
    )


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
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=quick_retry(),
    )
    return master


def is_cluster(client: RedisClient) -> bool:
    """True for a Redis Cluster client (its keys need hash tags, its pipelines span nodes)."""
    return isinstance(client, RedisCluster)

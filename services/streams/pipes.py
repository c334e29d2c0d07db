"""Round trips of several commands, on one server (or a Sentinel's master) and on a Redis Cluster alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
import redis
from redis.commands.core import Script
from redis.exceptions import AskError, NoScriptError

from services.errors import StoreUnavailable
from services.streams.connection import LazyCluster, RedisClient, is_cluster

Pipe = Any
"""A redis-py pipeline: ``redis.client.Pipeline`` or ``redis.cluster.ClusterPipeline``."""


def read_batch(client: RedisClient, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send read commands in one write on a pooled connection; raises StoreUnavailable.

    A dead pooled connection (refused or reset, e.g. after a Redis restart) is retried once on a
    fresh one; a timeout is not: a hung Redis must cost a callback one timeout, not several (a
    reconnect would wait again for each handshake command). On a cluster the batch (whose keys share
    a hash tag) goes the same way to the node serving its slot; if the slot moved, once through a
    cluster pipeline, which follows the move and refreshes the client's slot map.
    """
    if isinstance(client, LazyCluster):
        cluster = client.client
        node = cluster.get_node_from_key(commands[0][1])  # type: ignore[no-untyped-call]
        if node is None:
            raise StoreUnavailable("no node serves the slot")
        server = cluster.get_redis_connection(node)
        try:
            return _packed(server, commands)
        except _Moved:
            return run(client, lambda pipe: [pipe.execute_command(*command) for command in commands])
    return _packed(client, commands)


class _Moved(Exception):
    """The batch's slot is served by another node now."""


def _packed(server: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    pool = server.connection_pool
    for attempt in (0, 1):
        conn = None
        try:
            conn = pool.get_connection()
            # hiredis packs in C (a third of redis-py's own packing cost on this path)
            packed = b"".join([hiredis.pack_command(command) for command in commands])
            conn.send_packed_command([packed], check_health=False)  # type: ignore[no-untyped-call]
            return [conn.read_response() for _ in commands]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if conn is not None:
                conn.disconnect()  # type: ignore[no-untyped-call]
            if attempt or isinstance(exc, redis.TimeoutError | TimeoutError):
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except AskError as exc:  # MOVED is one too; replies may be left unread: never reuse this connection
            if conn is not None:
                conn.disconnect()  # type: ignore[no-untyped-call]
            raise _Moved() from exc
        except redis.RedisError as exc:
            if conn is not None:  # replies may be left unread: never reuse this connection
                conn.disconnect()  # type: ignore[no-untyped-call]
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if conn is not None:
                pool.release(conn)
    raise AssertionError("unreachable")  # pragma: no cover


def run(client: RedisClient, build: Callable[[Pipe], object], *, raise_on_error: bool = True,
        scripts: tuple[Script, ...] = ()) -> list[Any]:
    """Queue commands with ``build(pipe)`` and send them in one non-transactional round trip.

    With ``raise_on_error`` False a command's error comes back in its place. On a cluster redis-py
    does not load the ``scripts`` a pipeline calls (a new or promoted master has none), so a NOSCRIPT
    reply loads them on every master and the round trip runs once more: every script here is safe
    to run twice, and one that hit NOSCRIPT did not run at all.
    """
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        build(_ClusterPipe(pipe) if is_cluster(client) else pipe)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if not attempt and scripts and any(isinstance(r, NoScriptError) for r in replies):
            for script in scripts:
                script.sha = client.script_load(script.script)
            continue
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies
    raise AssertionError("unreachable")  # pragma: no cover


class _ClusterPipe:
    """A cluster pipeline that takes script calls: redis-py blocks its ``evalsha`` method, while the
    plain command is routed by its keys like any other."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Pipe:
        """Queue EVALSHA (what ``Script.__call__`` sends)."""
        return self._pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

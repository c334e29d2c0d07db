"""Stream state in Redis, shared by every replica: claim, append, finish, snapshot, leases."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from services import scripts
from services.errors import StoreUnavailable
from services.keys import DEDUPE_TTL, STREAM_TTL, Keys

TERMINAL = frozenset({"done", "failed", "interrupted"})


class WriteResult(enum.IntEnum):
    """Outcome of a text write (the WRITE_TEXT script's return codes)."""

    APPLIED = 1
    REPLAYED = 0
    MISSING = -1
    FINISHED = -2
    GAP = -3


@dataclass(frozen=True)
class Snapshot:
    """The cumulative text and status of a stream, read in one round trip."""

    text: str
    status: str
    note: str
    created_ms: int
    seq: int
    meta: dict[str, str]

    @property
    def finished(self) -> bool:
        """True once the stream reached a terminal status."""
        return self.status in TERMINAL


@contextmanager
def store_errors() -> Iterator[None]:
    """Re-raise Redis and socket failures as ``StoreUnavailable``."""
    try:
        yield
    except (redis.RedisError, OSError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


class StreamStore:
    """Redis-backed stream records; every method is one round trip and safe to replay."""

    def __init__(self, client: redis.Redis, keys: Keys, *, stream_ttl: int = STREAM_TTL,
                 dedupe_ttl: int = DEDUPE_TTL, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.keys = keys
        self.stream_ttl = stream_ttl
        self.dedupe_ttl = dedupe_ttl
        self.clock = clock
        self._claim = client.register_script(scripts.CLAIM_MESSAGE)
        self._write = client.register_script(scripts.WRITE_TEXT)
        self._status = client.register_script(scripts.SET_STATUS)
        self._renew = client.register_script(scripts.RENEW_LEASE)
        self._release = client.register_script(scripts.RELEASE_LEASE)

    def now_ms(self) -> int:
        """Current time in milliseconds from the injected clock."""
        return int(self.clock() * 1000)

    def claim(self, msgid: str, sid: str, meta: dict[str, str]) -> tuple[bool, str]:
        """Record ``sid`` as the answer to ``msgid`` unless a delivery already did; return (new, sid)."""
        keys = [self.keys.msg(msgid), self.keys.stream_meta(sid), self.keys.stream_text(sid)]
        args: list[Any] = [sid, self.dedupe_ttl, self.stream_ttl, self.now_ms()]
        for name, value in meta.items():
            args += [name, value]
        with store_errors():
            created, winner = self._claim(keys=keys, args=args)
        return bool(created), winner.decode() if isinstance(winner, bytes) else str(winner)

    def write(self, sid: str, seq: int, text: str, *, replace: bool = False) -> WriteResult:
        """Append (or replace with) ``text`` as write number ``seq`` of the stream."""
        keys = [self.keys.stream_meta(sid), self.keys.stream_text(sid)]
        args = [seq, "replace" if replace else "append", text, self.now_ms()]
        with store_errors():
            return WriteResult(int(self._write(keys=keys, args=args)))

    def set_status(self, sid: str, status: str, note: str = "") -> bool:
        """Move a live stream to ``status``; False if it already finished or is gone."""
        with store_errors():
            return int(self._status(keys=[self.keys.stream_meta(sid)],
                                    args=[status, self.now_ms(), note])) == 1

    def snapshot(self, sid: str) -> Snapshot | None:
        """Read text and meta together (MULTI, one round trip); None when unknown or expired."""
        with store_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(self.keys.stream_text(sid))
            pipe.hgetall(self.keys.stream_meta(sid))
            text, meta_raw = pipe.execute()
        if not meta_raw or text is None:
            return None
        meta = {k.decode(): v.decode() for k, v in meta_raw.items()}
        return Snapshot(text=text.decode("utf-8", "replace"), status=meta.get("status", ""),
                        note=meta.get("note", ""), created_ms=int(meta.get("created", 0)),
                        seq=int(meta.get("seq", 0)), meta=meta)

    def get_conversation(self, scope: str, idle_seconds: int) -> str | None:
        """Return the stored Dify conversation id of ``scope``, refreshing its idle expiry."""
        with store_errors():
            value = self.redis.getex(self.keys.conversation(scope), ex=idle_seconds)
        if isinstance(value, bytes):
            return value.decode()
        return value or None

    def set_conversation(self, scope: str, conversation_id: str, idle_seconds: int) -> None:
        """Remember ``conversation_id`` for ``scope`` until it has been idle for ``idle_seconds``."""
        with store_errors():
            self.redis.set(self.keys.conversation(scope), conversation_id, ex=idle_seconds)

    def drop_conversation(self, scope: str) -> None:
        """Forget the conversation of ``scope`` (Dify no longer knows it)."""
        with store_errors():
            self.redis.delete(self.keys.conversation(scope))

    def acquire_lease(self, key: str, token: str, lease_ms: int) -> bool:
        """Take the lease ``key`` for ``token`` if nobody holds it."""
        with store_errors():
            return bool(self.redis.set(key, token, nx=True, px=lease_ms))

    def renew_lease(self, key: str, token: str, lease_ms: int) -> bool:
        """Extend a lease the caller still owns."""
        with store_errors():
            return int(self._renew(keys=[key], args=[token, lease_ms])) == 1

    def release_lease(self, key: str, token: str) -> None:
        """Release a lease the caller owns (no-op otherwise)."""
        with store_errors():
            self._release(keys=[key], args=[token])

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
from services.keys import OWNER_LEASE_MS, STREAM_TTL, Keys

TERMINAL = frozenset({"done", "failed", "interrupted"})
META_FIELDS = ("status", "note", "created", "seq", "final", "shown", "closed", "followup", "task_id",
               "dify_user", "delivered", "user", "chat")
"""Every meta field any reader uses; snapshots fetch exactly these (HMGET, not HGETALL)."""


class WriteResult(enum.IntEnum):
    """Outcome of a text write (the WRITE_TEXT script's return codes)."""

    APPLIED = 1
    REPLAYED = 0
    MISSING = -1
    FINISHED = -2
    GAP = -3


@dataclass(frozen=True)
class Snapshot:
    """A stream's text (possibly only its first bytes), total size, meta and owner, read at once."""

    text: str
    text_bytes: int
    status: str
    note: str
    created_ms: int
    seq: int
    owner_alive: bool
    meta: dict[str, str]

    @property
    def finished(self) -> bool:
        """True once the answer reached a terminal status."""
        return self.status in TERMINAL

    @property
    def final(self) -> str | None:
        """The fixed last frame, once the stream was closed for WeCom (window or overflow)."""
        return self.meta.get("final")


@dataclass(frozen=True)
class Closure:
    """How a stream was closed for WeCom: the last frame and how much of the answer it showed."""

    final: str
    shown: int
    reason: str


@contextmanager
def store_errors() -> Iterator[None]:
    """Re-raise Redis, socket and encoding failures as ``StoreUnavailable``."""
    try:
        yield
    except (redis.RedisError, OSError, UnicodeError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class StreamStore:
    """Redis-backed stream records; every method is one round trip and safe to replay."""

    def __init__(self, client: redis.Redis, keys: Keys, *, stream_ttl: int = STREAM_TTL,
                 owner_lease_ms: int = OWNER_LEASE_MS, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.keys = keys
        self.stream_ttl = stream_ttl
        self.owner_lease_ms = owner_lease_ms
        self.clock = clock
        self._claim = client.register_script(scripts.CLAIM_MESSAGE)
        self._write = client.register_script(scripts.WRITE_TEXT)
        self._status = client.register_script(scripts.SET_STATUS)
        self._fields = client.register_script(scripts.SET_FIELDS)
        self._close = client.register_script(scripts.CLOSE_STREAM)
        self._interrupt = client.register_script(scripts.INTERRUPT_ORPHAN)
        self._mark = client.register_script(scripts.MARK_DELIVERED)
        self._renew = client.register_script(scripts.RENEW_LEASE)
        self._renew_many = client.register_script(scripts.RENEW_LEASES)
        self._release = client.register_script(scripts.RELEASE_LEASE)

    def now_ms(self) -> int:
        """Current time in milliseconds from the injected clock."""
        return int(self.clock() * 1000)

    def claim(self, msgid: str, sid: str, owner: str, meta: dict[str, str], *,
              lane: tuple[str, str, int] | None = None) -> tuple[bool, str, bool]:
        """Record ``sid`` (owned by ``owner``) as the answer to ``msgid`` unless a delivery already did.

        With ``lane`` = (key, token, lease ms) the conversation's lane is taken too if it is free.
        Returns (created, sid that answers msgid, lane taken).
        """
        keys = [self.keys.msg(msgid), self.keys.stream_meta(sid), self.keys.stream_text(sid),
                self.keys.stream_owner(sid)]
        args: list[Any] = [sid, self.stream_ttl, self.stream_ttl, self.now_ms(), owner, self.owner_lease_ms, "", 0]
        if lane is not None:
            keys.append(lane[0])
            args[6:8] = [lane[1], lane[2]]
        for name, value in meta.items():
            args += [name, value]
        with store_errors():
            created, winner, laned = self._claim(keys=keys, args=args)
        return bool(created), _text(winner), bool(laned)

    def write(self, sid: str, seq: int, text: str, *, replace: bool = False) -> WriteResult:
        """Append (or replace with) ``text`` as write number ``seq`` of the stream."""
        keys = [self.keys.stream_meta(sid), self.keys.stream_text(sid)]
        args = [seq, "replace" if replace else "append", text, self.now_ms()]
        with store_errors():
            return WriteResult(int(self._write(keys=keys, args=args)))

    def set_status(self, sid: str, status: str, note: str = "") -> bool:
        """Move a live stream to ``status``; False if it already finished or is gone."""
        with store_errors():
            return int(self._status(keys=[self.keys.stream_meta(sid)], args=[status, self.now_ms(), note])) == 1

    def set_fields(self, sid: str, fields: dict[str, str]) -> bool:
        """Set meta fields of an existing stream (never recreates an expired one)."""
        args: list[Any] = [x for item in fields.items() for x in item]
        with store_errors():
            return int(self._fields(keys=[self.keys.stream_meta(sid)], args=args)) == 1

    def snapshot(self, sid: str, max_bytes: int | None = None, *, poll: bool = False) -> Snapshot | None:
        """Read meta, owner and text (its first ``max_bytes`` at most) in one round trip.

        This is every poll's only Redis call, so it is a plain batch of reads on a pooled connection
        (no Lua, no MULTI: a third of the CPU). The order makes it consistent without a transaction:
        a producer writes its last text before it sets a final status, so meta read first means a
        finished status always comes with the complete text (and a live one at worst with newer text).
        """
        text_key = self.keys.stream_text(sid)
        commands: list[tuple[Any, ...]] = [
            ("HMGET", self.keys.stream_meta(sid), *META_FIELDS), ("EXISTS", self.keys.stream_owner(sid)),
            ("EXISTS", text_key), ("STRLEN", text_key),
            ("GET", text_key) if max_bytes is None else ("GETRANGE", text_key, 0, max_bytes - 1)]
        if poll:
            polls = self.keys.stream_polls(sid)
            commands += [("INCR", polls), ("EXPIRE", polls, self.stream_ttl)]
        values, owner, has_text, size, raw, *counted = self._batch(commands)
        if values[0] is None or not has_text:
            return None
        meta = {name: _text(v) for name, v in zip(META_FIELDS, values, strict=True) if v is not None}
        if counted:
            meta["polls"] = str(counted[0])
        raw = raw or b""
        # GETRANGE may cut the last character: drop an incomplete tail, never the middle.
        text = raw.decode("utf-8", "ignore") if max_bytes is not None and size > max_bytes else _text(raw)
        return Snapshot(text=text, text_bytes=int(size), status=meta.get("status", ""),
                        note=meta.get("note", ""), created_ms=int(meta.get("created", 0)),
                        seq=int(meta.get("seq", 0)), owner_alive=bool(owner), meta=meta)

    def _batch(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send read commands in one write on a pooled connection.

        A dead pooled connection (refused or reset, e.g. after a Redis restart) is retried once on a
        fresh one; a timeout is not: a hung Redis must cost a callback one timeout, not several (a
        reconnect would wait again for each handshake command).
        """
        pool = self.redis.connection_pool
        for attempt in (0, 1):
            conn = None
            try:
                conn = pool.get_connection()
                conn.send_packed_command(conn.pack_commands(commands))  # type: ignore[no-untyped-call]
                return [conn.read_response() for _ in commands]
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if conn is not None:
                    conn.disconnect()  # type: ignore[no-untyped-call]
                if attempt or isinstance(exc, redis.TimeoutError | TimeoutError):
                    raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except redis.RedisError as exc:
                if conn is not None:  # replies may be left unread: never reuse this connection
                    conn.disconnect()  # type: ignore[no-untyped-call]
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
            finally:
                if conn is not None:
                    pool.release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self, sid: str, reason: str, final: str, shown: int, *, finished_ok: bool = False) -> Closure | None:
        """Fix the last frame WeCom sees; the first close wins.

        None when the stream is gone, or (unless ``finished_ok``) when its answer already finished.
        """
        with store_errors():
            result = self._close(keys=[self.keys.stream_meta(sid)],
                                 args=[reason, final, shown, self.now_ms(), int(finished_ok)])
        if int(result[0]) in (-1, 2):
            return None
        return Closure(final=_text(result[1]), shown=int(result[2]), reason=_text(result[3]))

    def interrupt_orphan(self, sid: str, note: str) -> bool:
        """Finish a stream whose producer lease lapsed; True if this call did it."""
        with store_errors():
            return int(self._interrupt(keys=[self.keys.stream_meta(sid), self.keys.stream_owner(sid)],
                                       args=[self.now_ms(), note])) == 1

    def mark_delivered(self, sid: str) -> bool:
        """Claim the one ``response_url`` delivery of a stream; False if claimed before or gone."""
        with store_errors():
            return int(self._mark(keys=[self.keys.stream_meta(sid)], args=[self.now_ms()])) == 1

    def renew_owners(self, sids: list[str], owner: str) -> int:
        """Extend this producer's leases on ``sids`` (one script call per 1000); return how many held."""
        held = 0
        with store_errors():
            for i in range(0, len(sids), 1000):
                keys = [self.keys.stream_owner(sid) for sid in sids[i:i + 1000]]
                held += int(self._renew_many(keys=keys, args=[owner, self.owner_lease_ms]))
        return held

    def get_conversation(self, scope: str, idle_seconds: int) -> str | None:
        """Return the stored Dify conversation id of ``scope``, refreshing its idle expiry."""
        with store_errors():
            value = self.redis.getex(self.keys.conversation(scope), ex=idle_seconds)
        return _text(value) if value else None

    def set_conversation(self, scope: str, conversation_id: str, idle_seconds: int) -> None:
        """Remember ``conversation_id`` for ``scope`` until it has been idle for ``idle_seconds``."""
        with store_errors():
            self.redis.set(self.keys.conversation(scope), conversation_id, ex=idle_seconds)

    def drop_conversation(self, scope: str) -> None:
        """Forget the conversation of ``scope`` (Dify no longer knows it)."""
        with store_errors():
            self.redis.delete(self.keys.conversation(scope))

    def get_value(self, key: str) -> str | None:
        """GET one key (used for the ``active`` pointer)."""
        with store_errors():
            value = self.redis.get(key)
        return _text(value) if value is not None else None

    def acquire_lease(self, key: str, token: str, lease_ms: int) -> bool:
        """Take the lease ``key`` for ``token`` if nobody holds it."""
        with store_errors():
            return bool(self.redis.set(key, token, nx=True, px=lease_ms))

    def put_lease(self, key: str, token: str, lease_ms: int) -> None:
        """Set ``key`` to ``token`` for ``lease_ms`` unconditionally (e.g. the active-stream pointer)."""
        with store_errors():
            self.redis.set(key, token, px=lease_ms)

    def renew_lease(self, key: str, token: str, lease_ms: int) -> bool:
        """Extend a lease the caller still owns."""
        with store_errors():
            return int(self._renew(keys=[key], args=[token, lease_ms])) == 1

    def release_lease(self, key: str, token: str) -> None:
        """Release a lease the caller owns (no-op otherwise)."""
        with store_errors():
            self._release(keys=[key], args=[token])

"""Stream state in Redis, shared by every replica: claim, append, finish, snapshot, leases."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from services.errors import StoreUnavailable
from services.streams import pipes, scripts
from services.streams.connection import RedisClient
from services.streams.keys import IMAGES_TTL, OWNER_LEASE_MS, STREAM_TTL, Keys
from services.streams.records import (
    META_FIELDS,
    Closure,
    Lease,
    Snapshot,
    Turn,
    WriteResult,
    store_errors,
    text_of,
)

CLAIM_SYNC_MS = 50
"""With Sentinel, how long a claim waits for a replica to have it: a claim the master took but never
replicated before it died would let WeCom's re-delivery be answered twice (README "Redis")."""
BUSY_SHOWN_LIMIT = 10_000  # "busy" polls remembered while Redis is away (beyond: the oldest are kept)


class StreamStore:
    """Redis-backed stream records; every method is one round trip and safe to replay."""

    def __init__(self, client: RedisClient, keys: Keys, *, stream_ttl: int = STREAM_TTL,
                 owner_lease_ms: int = OWNER_LEASE_MS, clock: Callable[[], float] = time.time,
                 replicated_claims: bool = False) -> None:
        self.redis = client
        self.replicated_claims = replicated_claims  # Sentinel: a claim reaches a replica before WeCom hears of it
        self.keys = keys
        self.stream_ttl = stream_ttl
        self.owner_lease_ms = owner_lease_ms
        self.clock = clock
        self.failed_at = float("-inf")  # clock() of the last Redis failure any caller of this store saw
        self._busy_shown: dict[str, float] = {}  # streams a poll answered "busy", to record once Redis is back
        self._busy_lock = threading.Lock()
        self._claim = client.register_script(scripts.CLAIM_MESSAGE)
        self._write = client.register_script(scripts.WRITE_TEXT)
        self._status = client.register_script(scripts.SET_STATUS)
        self._fields = client.register_script(scripts.SET_FIELDS)
        self._images = client.register_script(scripts.PUT_IMAGES)
        self._progress = client.register_script(scripts.SET_PROGRESS)
        self._close = client.register_script(scripts.CLOSE_STREAM)
        self._interrupt = client.register_script(scripts.INTERRUPT_ORPHAN)
        self._mark = client.register_script(scripts.MARK_DELIVERED)
        self._renew_owners = client.register_script(scripts.RENEW_OWNERS)
        self._turn = client.register_script(scripts.QUEUE_TURN)
        self._release = client.register_script(scripts.RELEASE_LEASE)
        self._pipelined = (self._write, self._progress, self._fields, self._turn, self._renew_owners)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """``store_errors``, also noting when Redis last failed this process (``failed_at``)."""
        try:
            with store_errors():
                yield
        except StoreUnavailable:
            self.failed_at = self.clock()
            raise

    def now_ms(self) -> int:
        """Current time in milliseconds from the injected clock."""
        return int(self.clock() * 1000)

    def claim(self, msgid: str, sid: str, owner: str, meta: dict[str, str], *,
              scope: str | None = None) -> tuple[bool, str, bool]:
        """Record ``sid`` (owned by ``owner``) as the answer to ``msgid`` unless a delivery already did.

        With ``scope`` the stream also takes a ticket in that conversation's queue.
        Returns (created, sid that answers msgid, first in its queue).
        """
        keys = [self.keys.msg(msgid, sid), self.keys.stream_meta(sid), self.keys.stream_text(sid),
                self.keys.stream_owner(sid)]
        if scope is not None:
            keys.append(self.keys.queue(scope))
        args: list[Any] = [sid, self.stream_ttl, self.stream_ttl, self.now_ms(), owner, self.owner_lease_ms]
        for name, value in meta.items():
            args += [name, value]
        with self._errors():
            if not self.replicated_claims:
                created, winner, first = self._claim(keys=keys, args=args)
            else:  # WAIT counts this connection's writes: the claim and the WAIT share a pipeline
                def build(pipe: pipes.Pipe) -> None:
                    self._claim(keys=keys, args=args, client=pipe)
                    pipe.execute_command("WAIT", 1, CLAIM_SYNC_MS)

                (created, winner, first), _ = pipes.run(self.redis, build, scripts=(self._claim,))
        return bool(created), text_of(winner), bool(first)

    def write(self, sid: str, seq: int, text: str, *, replace: bool = False) -> WriteResult:
        """Append (or replace with) ``text`` as write number ``seq`` of the stream."""
        keys = [self.keys.stream_meta(sid), self.keys.stream_text(sid)]
        args = [seq, "replace" if replace else "append", text, self.now_ms()]
        with self._errors():
            return WriteResult(int(self._write(keys=keys, args=args)))

    def write_many(self, writes: list[tuple[str, int, str, bool]],
                   progress: list[tuple[str, str]] | None = None) -> list[WriteResult | None]:
        """Apply (sid, seq, text, replace) writes, and (sid, progress) notes, in one pipelined round trip.

        Returns the writes' results, then one per note (APPLIED, or None: Redis refused it), in order.
        A write Redis answered with an error (OOM, BUSY, READONLY during a failover) is None: not
        applied, to be sent again. A failed round trip raises ``StoreUnavailable``; since every
        write is sequence-checked, all of them may simply be sent again. A note is set only on a
        live stream (``SET_PROGRESS``): a finished answer keeps the note it ended with.
        """
        if not writes and not progress:
            return []
        now = self.now_ms()

        def build(pipe: pipes.Pipe) -> None:
            for sid, seq, text, replace in writes:
                self._write(keys=[self.keys.stream_meta(sid), self.keys.stream_text(sid)],
                            args=[seq, "replace" if replace else "append", text, now], client=pipe)
            for sid, note in progress or []:
                self._progress(keys=[self.keys.stream_meta(sid)], args=[note], client=pipe)

        with self._errors():
            replies = pipes.run(self.redis, build, raise_on_error=False, scripts=self._pipelined)
        results = [WriteResult(int(r)) if isinstance(r, int) else None for r in replies[: len(writes)]]
        return results + [WriteResult.APPLIED if isinstance(r, int) else None for r in replies[len(writes):]]

    def set_progress(self, sid: str, note: str) -> bool:
        """Set a live stream's progress note; False if it has finished (or is gone)."""
        with self._errors():
            return int(self._progress(keys=[self.keys.stream_meta(sid)], args=[note])) == 1

    def set_status(self, sid: str, status: str, note: str = "") -> bool:
        """Move a live stream to ``status``; False if it already finished or is gone."""
        return self.finish(sid, status, note) is WriteResult.APPLIED

    def finish(self, sid: str, status: str, note: str = "", writes: int | None = None) -> WriteResult:
        """Move a live stream to ``status`` unless it holds fewer than ``writes`` writes (GAP).

        APPLIED: moved; FINISHED: it had finished already; MISSING: gone.
        """
        with self._errors():
            result = int(self._status(keys=[self.keys.stream_meta(sid)],
                                      args=[status, self.now_ms(), note, uuid.uuid4().hex,
                                            "" if writes is None else writes]))
        return WriteResult.FINISHED if result == 0 else WriteResult(result)

    def set_fields(self, sid: str, fields: dict[str, str]) -> bool:
        """Set meta fields of an existing stream (never recreates an expired one)."""
        args: list[Any] = [x for item in fields.items() for x in item]
        with self._errors():
            return int(self._fields(keys=[self.keys.stream_meta(sid)], args=args)) == 1

    def started(self, sid: str, fields: dict[str, str], answer: str, answer_ttl: int) -> None:
        """Record what an answer's first frame from Dify told: meta ``fields``, and its ids for feedback."""
        def build(pipe: pipes.Pipe) -> None:
            self._fields(keys=[self.keys.stream_meta(sid)], args=[x for item in fields.items() for x in item],
                         client=pipe)
            pipe.set(self.keys.feedback(sid), answer, ex=answer_ttl)

        with self._errors():
            pipes.run(self.redis, build, scripts=self._pipelined)

    def put_images(self, sid: str, images: list[dict[str, Any]], links: str) -> int:
        """Keep a running answer's images for its last frame (and their links for a follow-up).

        1: kept; 2: the stream was closed early or has finished, so its last frame cannot show them; 0: gone.
        """
        keys = [self.keys.stream_meta(sid), self.keys.stream_images(sid)]
        with self._errors():
            return int(self._images(keys=keys, args=[json.dumps(images), len(images), links, IMAGES_TTL * 1000]))

    def images(self, sid: str) -> list[dict[str, Any]]:
        """The images of a stream's last frame ([] when it has none, or they expired)."""
        with self._errors():
            raw = self.redis.get(self.keys.stream_images(sid))
        try:
            items = json.loads(raw) if raw else []
        except ValueError:
            return []
        return items if isinstance(items, list) else []

    def snapshot(self, sid: str, max_bytes: int | None = None, *, poll: bool = False) -> Snapshot | None:
        """Read meta, owner and text (its first ``max_bytes`` at most) in one round trip.

        This is every poll's only Redis call, so it is a plain batch of reads on a pooled connection
        (no Lua, no MULTI: a third of the CPU). The order makes it consistent without a transaction:
        the engine writes its last text before it sets a final status, so meta read first means a
        finished status always comes with the complete text (and a live one at worst with newer text).
        """
        text_key, meta_key = self.keys.stream_text(sid), self.keys.stream_meta(sid)
        # one byte more than asked for tells whether the text is longer (no STRLEN needed)
        commands: list[tuple[Any, ...]] = [
            ("HMGET", meta_key, *META_FIELDS), ("EXISTS", self.keys.stream_owner(sid)),
            ("GET", text_key) if max_bytes is None else ("GETRANGE", text_key, 0, max_bytes)]
        if poll:
            commands.append(("HINCRBY", meta_key, "polls", 1))  # the meta hash carries the stream's TTL
        with self._errors():
            values, owner, raw, *counted = pipes.read_batch(self.redis, commands)
        if values[0] is None:
            if counted:  # HINCRBY made a hash of a stream that is gone: it must not live on without a TTL
                with self._errors():
                    self.redis.delete(meta_key)
            return None
        meta = {name: text_of(v) for name, v in zip(META_FIELDS, values, strict=True) if v is not None}
        if counted:
            meta["polls"] = str(counted[0])
        raw = raw or b""
        if max_bytes is not None and len(raw) > max_bytes:
            # GETRANGE may cut the last character: drop an incomplete tail, never the middle.
            text = raw[:max_bytes].decode("utf-8", "ignore")
        else:
            text = text_of(raw)
        return Snapshot(text=text, text_bytes=len(raw), status=meta.get("status", ""),
                        note=meta.get("note", ""), created_ms=int(meta.get("created", 0)),
                        seq=int(meta.get("seq", 0)), owner_alive=bool(owner), meta=meta)

    def close(self, sid: str, reason: str, final: str, shown: int, *, finished_ok: bool = False) -> Closure | None:
        """Fix the last frame WeCom sees; the first close wins.

        None when the stream is gone, or (unless ``finished_ok``) when its answer already finished.
        """
        with self._errors():
            result = self._close(keys=[self.keys.stream_meta(sid)],
                                 args=[reason, final, shown, self.now_ms(), int(finished_ok)])
        if int(result[0]) in (-1, 2):
            return None
        return Closure(final=text_of(result[1]), shown=int(result[2]), reason=text_of(result[3]))

    def interrupt_orphan(self, sid: str, note: str) -> bool:
        """Finish a stream whose owner lease lapsed; True if this call did it."""
        with self._errors():
            return int(self._interrupt(keys=[self.keys.stream_meta(sid), self.keys.stream_owner(sid)],
                                       args=[self.now_ms(), note])) == 1

    def mark_delivered(self, sid: str) -> bool:
        """Claim the one ``response_url`` delivery of a stream; False if claimed before or gone."""
        token = f"{self.now_ms()}:{uuid.uuid4().hex}"  # a replay of this call carries the same token
        with self._errors():
            return int(self._mark(keys=[self.keys.stream_meta(sid)], args=[token])) == 1

    def renew_owners(self, sids: list[str], owner: str) -> list[Lease]:
        """Extend ``owner``'s leases on ``sids`` (one script call per 500) and say what each found."""
        batches = self.keys.slot_batches(sids, 500)

        def build(pipe: pipes.Pipe) -> None:
            for batch in batches:
                keys = [k for sid in batch for k in (self.keys.stream_owner(sid), self.keys.stream_meta(sid))]
                self._renew_owners(keys=keys, args=[owner, self.owner_lease_ms], client=pipe)

        with self._errors():
            replies = pipes.run(self.redis, build, scripts=self._pipelined)
        states = {sid: Lease(int(x)) for batch, reply in zip(batches, replies, strict=True)
                  for sid, x in zip(batch, reply, strict=True)}
        return [states[sid] for sid in sids]

    def queue_heads(self, scopes: list[str]) -> list[str | None]:
        """The stream at the head of each conversation's ticket queue, in one round trip."""
        with self._errors():
            raw = pipes.run(self.redis, lambda pipe: [pipe.lindex(self.keys.queue(scope), 0) for scope in scopes])
        return [text_of(v) if v is not None else None for v in raw]

    def queue_turns(self, asks: list[tuple[str, str, str | None]]) -> list[Turn]:
        """Ask each (scope, sid, head last seen) for sid's turn in one round trip; an ended head is removed."""
        if not asks:
            return []
        def build(pipe: pipes.Pipe) -> None:
            for scope, sid, head in asks:
                # with no head seen the script reads no stream: sid's keys just keep it in the queue's slot
                keys = [self.keys.queue(scope), self.keys.stream_meta(head or sid), self.keys.stream_owner(head or sid)]
                self._turn(keys=keys, args=[head or "", sid, self.stream_ttl], client=pipe)

        with self._errors():
            replies = pipes.run(self.redis, build, scripts=self._pipelined)
        return [Turn(int(r)) for r in replies]

    def queue_leave(self, scope: str, sid: str) -> None:
        """Take ``sid`` out of its conversation's queue (the next answer may start)."""
        with self._errors():
            self.redis.lrem(self.keys.queue(scope), 1, sid)

    def note_busy_shown(self, sid: str) -> None:
        """Remember that a poll answered ``sid`` "busy" (Redis away): WeCom ended the stream there."""
        with self._busy_lock:
            if len(self._busy_shown) < BUSY_SHOWN_LIMIT:
                self._busy_shown[sid] = self.clock()

    def record_busy_shown(self) -> int:
        """Write the remembered "busy" polls into their streams (the follow-up reads them); how many."""
        with self._busy_lock:
            pending = list(self._busy_shown.items())
        if not pending:
            return 0
        def build(pipe: pipes.Pipe) -> None:
            for sid, when in pending:
                self._fields(keys=[self.keys.stream_meta(sid)], args=["busy", int(when * 1000)], client=pipe)

        with self._errors():
            pipes.run(self.redis, build, scripts=self._pipelined)
        with self._busy_lock:
            for sid, when in pending:
                if self._busy_shown.get(sid) == when:
                    del self._busy_shown[sid]
        return len(pending)

    def mark_seen(self, sid: str) -> None:
        """Record that a poll showed WeCom the stream's last frame (once; never recreates the stream)."""
        with self._errors():
            self._fields(keys=[self.keys.stream_meta(sid)], args=["seen", self.now_ms()])

    def get_conversation(self, scope: str) -> str | None:
        """Return the stored Dify conversation id of ``scope`` (only an answer that succeeds renews it)."""
        with self._errors():
            value = self.redis.get(self.keys.conversation(scope))
        return text_of(value) if value else None

    def set_conversation(self, scope: str, conversation_id: str, idle_seconds: int) -> None:
        """Remember ``conversation_id`` for ``scope`` until it has been idle for ``idle_seconds``."""
        with self._errors():
            self.redis.set(self.keys.conversation(scope), conversation_id, ex=idle_seconds)

    def drop_conversation(self, scope: str) -> None:
        """Forget the conversation of ``scope`` (Dify no longer knows it)."""
        with self._errors():
            self.redis.delete(self.keys.conversation(scope))

    def get_value(self, key: str) -> str | None:
        """GET one key (used for the ``active`` pointer)."""
        with self._errors():
            value = self.redis.get(key)
        return text_of(value) if value is not None else None

    def acquire_lease(self, key: str, token: str, lease_ms: int) -> bool:
        """Take the lease ``key`` for ``token`` if nobody holds it."""
        with self._errors():
            return bool(self.redis.set(key, token, nx=True, px=lease_ms))

    def put_lease(self, key: str, token: str, lease_ms: int) -> None:
        """Set ``key`` to ``token`` for ``lease_ms`` unconditionally (e.g. the active-stream pointer)."""
        with self._errors():
            self.redis.set(key, token, px=lease_ms)

    def release_lease(self, key: str, token: str) -> None:
        """Release a lease the caller owns (no-op otherwise)."""
        with self._errors():
            self._release(keys=[key], args=[token])

"""A capped, expiring Redis stream with one consumer group: at-least-once work beside the answers.

The records and the webhook events of a bot each wait in one. Any worker of any replica takes a
batch, does the work (a MySQL write, an HTTP POST) and only then marks it done (XACK and XDEL, so
the stream's length is the work still to do). A batch whose taker died or failed is taken again
after ``RETRY_AFTER_MS``. The cap bounds the backlog while its consumer's target is away; what does
not fit is refused and counted, and the key's TTL (renewed by every add) bounds how long it waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from services.streams.records import store_errors, text_of
from services.streams.store import StreamStore

GROUP = "workers"
RETRY_AFTER_MS = 30_000
"""A batch taken and not done for this long (its taker died, or gave up for now) is taken again."""

ADD = """
-- KEYS[1] = the stream; ARGV[1] = cap (entries), ARGV[2] = TTL (ms), ARGV[3] = the group,
-- ARGV[4..] = field/value pairs. Adds an entry unless the stream holds ``cap`` already (returns false:
-- the caller counts the overflow). The group is made with the stream: a consumer started later still
-- sees every entry.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[3], '0', 'MKSTREAM')
elseif redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return id
"""


@dataclass(frozen=True)
class Entry:
    """One piece of work: its stream id and its fields."""

    id: str
    fields: dict[str, str]


class Backlog:
    """One capped stream of work (``key``) in ``store``'s Redis."""

    def __init__(self, store: StreamStore, key: str, *, cap: int, ttl_ms: int) -> None:
        self.store, self.key, self.cap, self.ttl_ms = store, key, cap, ttl_ms
        self._add = store.redis.register_script(ADD)

    def add(self, fields: dict[str, str]) -> bool:
        """Queue one entry; False if the backlog is full (raises StoreUnavailable)."""
        args: list[Any] = [self.cap, self.ttl_ms, GROUP]
        for name, value in fields.items():
            args += [name, value]
        with store_errors():
            return self._add(keys=[self.key], args=args) is not None

    def take(self, consumer: str, count: int, *, own: bool = True) -> list[Entry]:
        """Up to ``count`` new entries, after (with ``own``) ``consumer``'s unfinished ones and stale ones of others.

        A consumer that keeps its own retries (``own=False``) gets its unfinished entries back only
        once they are stale, like anyone else's.
        """
        r = self.store.redis
        with store_errors():
            try:
                entries = _entries(r.xreadgroup(GROUP, consumer, {self.key: "0"}, count=count)) if own else []
                _, claimed, *_ = r.xautoclaim(self.key, GROUP, consumer, RETRY_AFTER_MS, "0-0", count=count)
                entries += [e for e in _pairs(claimed) if e.id not in {x.id for x in entries}]
                entries += _entries(r.xreadgroup(GROUP, consumer, {self.key: ">"}, count=count))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return []  # nothing was ever added (or it expired): the next add makes the group
        return entries

    def keep(self, consumer: str, ids: list[str]) -> None:
        """Tell the group ``consumer`` still works on ``ids`` (waiting to retry): nobody else takes them."""
        if ids:
            with store_errors():
                self.store.redis.xclaim(self.key, GROUP, consumer, 0, list[Any](ids), justid=True)

    def done(self, ids: list[str]) -> None:
        """Mark entries done: acknowledged and deleted (raises StoreUnavailable)."""
        if not ids:
            return
        with store_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.xack(self.key, GROUP, *ids)
            pipe.xdel(self.key, *ids)
            pipe.execute()

    def size(self) -> int:
        """Entries waiting or being worked on."""
        with store_errors():
            return int(self.store.redis.xlen(self.key))


def _entries(reply: Any) -> list[Entry]:
    out: list[Entry] = []
    for _stream, items in reply or []:
        out += _pairs(items)
    return out


def _pairs(items: Any) -> list[Entry]:
    return [Entry(text_of(entry_id), {text_of(k): text_of(v) for k, v in (fields or {}).items()})
            for entry_id, fields in items or [] if fields is not None]

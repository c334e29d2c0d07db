"""What the stream store reads and answers: stream snapshots, closures, script outcomes, and its error mapping."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from services.errors import StoreUnavailable
from services.streams.connection import REDIS_ERRORS

TERMINAL = frozenset({"done", "failed", "interrupted"})
META_FIELDS = ("status", "note", "created", "seq", "final", "shown", "closed", "followup", "task_id",
               "dify_user", "delivered", "user", "chat", "seen", "busy", "images", "image_links", "card",
               "progress")
"""Every meta field any reader uses; snapshots fetch exactly these (HMGET, not HGETALL)."""


class Turn(enum.IntEnum):
    """Outcome of asking a conversation's ticket queue for a turn (the QUEUE_TURN script)."""

    MINE = 1
    WAIT = 0
    LOOK_AGAIN = -1


class Lease(enum.IntEnum):
    """What renewing an owner lease found (the RENEW_OWNERS script)."""

    LOST = 0
    HELD = 1
    FINISHED = 2  # still ours, but someone else finished the stream (e.g. /stop)


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
    text_bytes: int  # the whole text's size, or (when only its first bytes were read) more than were shown
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
    """Re-raise Redis (and Redis Cluster), socket and encoding failures as ``StoreUnavailable``."""
    try:
        yield
    except (*REDIS_ERRORS, UnicodeError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


def text_of(value: Any) -> str:
    """A Redis reply as text (bytes decoded as UTF-8, replacing what is not)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

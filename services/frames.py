"""Build the plaintext stream replies WeCom expects (wecom-protocol.md §2.2) and decide when to close.

WeCom shows ``stream.content`` (≤ 20480 UTF-8 bytes) and stops polling 6 minutes after the user's
message. A stream is *closed* early, with a fixed last frame, when its window runs out or its text
outgrows a frame; the engine then sends the answer (or the rest of it) through ``response_url``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.streams.records import Snapshot
from utils.text import utf8_len, utf8_prefix, utf8_suffix

MAX_CONTENT_BYTES = 20480
"""WeCom's limit on ``stream.content`` and on a ``response_url`` markdown message, in UTF-8 bytes."""

MIN_PROGRESS = 32
"""Bytes a progress note needs at least to be shown."""

NOTE_ROOM = 256
"""Bytes kept free for the note of a closing frame (the default notes are under 100 bytes)."""


@dataclass(frozen=True)
class Notes:
    """User-facing texts the renderer may show."""

    waiting: dict[str, str]  # live status -> note while the answer is still empty
    interrupted: str
    window: str  # the stream was closed early; the answer follows via response_url
    window_no_followup: str  # closed early and nothing can follow
    overflow: str  # the rest follows via response_url
    overflow_no_followup: str  # the rest is cut
    progress: str = "off"  # how an answer's progress note shows: off, steps (a line below), think (a block above)


@dataclass(frozen=True)
class Decision:
    """What to answer, and an optional store action to take first (``close`` or ``interrupt``)."""

    content: str
    finish: bool
    action: str = ""
    reason: str = ""
    shown: int = 0


def stream_frame(sid: str, content: str, finish: bool, images: list[dict[str, Any]] | None = None, *,
                 feedback: bool = False) -> dict[str, Any]:
    """Return a stream reply; ``content`` is the full snapshot, cut on a character boundary.

    ``images`` (``msg_item`` entries) are allowed only in the last frame (``finish``); ``feedback``
    (in an answer's first frame) lets the user rate it, under the stream's id.
    """
    stream: dict[str, Any] = {"id": sid, "finish": finish, "content": utf8_prefix(content, MAX_CONTENT_BYTES)}
    if images and finish:
        stream["msg_item"] = images
    if feedback:
        stream["feedback"] = {"id": sid}
    return {"msgtype": "stream", "stream": stream}


def fit(text: str, note: str, limit: int = MAX_CONTENT_BYTES) -> tuple[str, int]:
    """Return (content, shown): the longest prefix of ``text`` that fits ``limit`` bytes with ``note``."""
    sep = "\n\n" if text and note else ""
    budget = max(0, limit - utf8_len(note) - utf8_len(sep))
    shown = utf8_prefix(text, budget)
    return (f"{shown}{sep}{note}" if note else shown), len(shown)


def decide(snap: Snapshot, *, now_ms: int, window_ms: int, queued_after_ms: int, notes: Notes) -> Decision:
    """Decide the frame for a poll of ``snap`` (whose text may hold only its first bytes)."""
    if snap.final is not None:
        return Decision(snap.final, True)
    followup = snap.meta.get("followup") == "1"
    progress = snap.meta.get("progress", "")  # (with_progress shows nothing when it is off)
    if snap.finished:
        content, shown = fit(snap.text, snap.note)
        if snap.text_bytes == utf8_len(snap.text) and shown == len(snap.text):
            return Decision(with_progress(content, progress, notes.progress), True)
        note = notes.overflow if followup and snap.status != "interrupted" else notes.overflow_no_followup
        return _close("overflow", snap.text, note)
    if not snap.owner_alive:
        return Decision(fit(snap.text, notes.interrupted)[0], True, action="interrupt")
    if now_ms - snap.created_ms >= window_ms:
        return _close("window", snap.text, notes.window if followup else notes.window_no_followup)
    if snap.text_bytes > MAX_CONTENT_BYTES - NOTE_ROOM:  # leave room for the note of the closing frame
        return _close("overflow", snap.text, notes.overflow if followup else notes.overflow_no_followup)
    if not snap.text and snap.status in notes.waiting:
        if snap.status == "waiting" or now_ms - snap.created_ms >= queued_after_ms:
            return Decision(notes.waiting[snap.status], False)
    return Decision(with_progress(snap.text, progress, notes.progress), False)


def with_progress(content: str, note: str, mode: str) -> str:
    """``content`` with the progress ``note``: a ``<think>`` block above it or a line below, in the room it leaves.

    The answer always wins: the note keeps only its latest part that fits, or goes.
    """
    if not note or mode == "off":
        return content
    sep = "\n\n" if content else ""
    frame = ("<think>\n", "\n</think>") if mode == "think" else ("", "")
    room = MAX_CONTENT_BYTES - utf8_len(content) - utf8_len(sep) - utf8_len("".join(frame))
    if room < MIN_PROGRESS:
        return content
    tail = utf8_suffix(note, room)
    shown = f"{frame[0]}{tail}{frame[1]}"
    return f"{shown}{sep}{content}" if mode == "think" else f"{content}{sep}{shown}"


def _close(reason: str, text: str, note: str) -> Decision:
    content, shown = fit(text, note)
    return Decision(content, True, action="close", reason=reason, shown=shown)

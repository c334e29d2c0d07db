"""Build the plaintext stream replies WeCom expects (wecom-protocol.md §2.2)."""

from __future__ import annotations

from typing import Any

from services.stream_store import Snapshot
from utils.text import utf8_prefix

MAX_CONTENT_BYTES = 20480
"""WeCom's limit on ``stream.content``, in UTF-8 bytes."""


def stream_frame(sid: str, content: str, finish: bool) -> dict[str, Any]:
    """Return a stream reply; ``content`` is the full snapshot, cut on a character boundary."""
    return {"msgtype": "stream",
            "stream": {"id": sid, "finish": finish, "content": utf8_prefix(content, MAX_CONTENT_BYTES)}}


def render(snapshot: Snapshot, *, now_ms: int, notes: dict[str, str], queued_after_ms: int) -> tuple[str, bool]:
    """Return (content, finish) for a stream snapshot.

    While the answer is empty a note explains a wait that lasts longer than ``queued_after_ms``
    (pool full, authentication running) or one that is certain to be long (the previous message of
    the same conversation is still running). A finished stream shows its note after the text.
    """
    text = snapshot.text
    if snapshot.finished:
        if snapshot.note:
            text = f"{text}\n\n{snapshot.note}" if text else snapshot.note
        return text, True
    if not text and snapshot.status in notes:
        if snapshot.status == "waiting" or now_ms - snapshot.created_ms >= queued_after_ms:
            return notes[snapshot.status], False
    return text, False

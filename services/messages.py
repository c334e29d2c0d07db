"""Handle decrypted AI-bot callbacks: new text messages, stream refreshes, everything else.

Handlers touch only Redis (one or two round trips) and the in-process producer queue; they
never wait on Dify or any other network service.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from config import Settings
from services.errors import StoreUnavailable
from services.frames import render, stream_frame
from services.producer import Job, Producer
from services.stream_store import StreamStore
from utils.text import strip_mention

log = logging.getLogger(__name__)

Reply = dict[str, Any] | None
SID = re.compile(r"[0-9a-f]{32}")
MAX_ID_LEN = 256


class MessageHandler:
    """Turn one decrypted callback into the plaintext reply (None = empty body)."""

    def __init__(self, settings: Settings, store: StreamStore, producer: Producer) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.notes = {"queued": settings.msg_queued, "waiting": settings.msg_waiting_previous,
                      "authenticating": settings.msg_authenticating}

    def handle(self, msg: dict[str, Any]) -> Reply:
        """Dispatch on ``msgtype``."""
        msgtype = msg.get("msgtype")
        if msgtype == "text":
            return self.on_text(msg)
        if msgtype == "stream":
            return self.on_refresh(msg)
        log.info("callback ignored", extra={"msgtype": str(msgtype)[:32]})
        return None

    def on_text(self, msg: dict[str, Any]) -> Reply:
        """Start answering a text message (once per msgid) and reply with its stream."""
        msgid, user = _str(msg.get("msgid")), _str(_dict(msg.get("from")).get("userid"))
        content = _str(_dict(msg.get("text")).get("content"))
        if not msgid or not user or len(msgid) > MAX_ID_LEN or len(user) > MAX_ID_LEN:
            log.warning("text callback without a usable msgid or userid")
            return None
        chat = _str(msg.get("chatid")) if msg.get("chattype") == "group" else ""
        query = strip_mention(content, self.settings.bot_names) if chat else content.strip()
        sid = uuid.uuid4().hex  # 32 hex digits: unguessable, and what SID accepts
        try:
            created, sid = self.store.claim(msgid, sid, {"user": user, "chat": chat})
            if not created:
                log.info("duplicate delivery", extra={"msgid": msgid, "sid": sid})
                return self._frame(sid)
            if not query:
                self.store.set_status(sid, "done", self.settings.msg_empty_query)
                return self._frame(sid)
            job = Job(sid=sid, msgid=msgid, query=query, dify_user=self._dify_user(user, chat),
                      scope=self._scope(user, chat), wecom_user=user,
                      response_url=_str(msg.get("response_url")))
            if not self.producer.submit(job):
                log.warning("producer pool full", extra={"sid": sid})
                self.store.set_status(sid, "failed", self.settings.msg_busy)
        except StoreUnavailable:
            log.error("redis unavailable on new message", extra={"msgid": msgid})
            return stream_frame(sid, self.settings.msg_busy, True)
        log.info("stream started", extra={"msgid": msgid, "sid": sid})
        return stream_frame(sid, "", False)

    def on_refresh(self, msg: dict[str, Any]) -> Reply:
        """Answer a stream refresh with the cumulative content so far."""
        sid = _str(_dict(msg.get("stream")).get("id"))
        if not sid:
            return None
        if not SID.fullmatch(sid):  # not one of ours: never touches Redis
            return stream_frame(sid[:MAX_ID_LEN], self.settings.msg_expired, True)
        try:
            return self._frame(sid)
        except StoreUnavailable:
            log.error("redis unavailable on refresh", extra={"sid": sid})
            return stream_frame(sid, self.settings.msg_busy, True)

    def _frame(self, sid: str) -> dict[str, Any]:
        snapshot = self.store.snapshot(sid)
        if snapshot is None:
            return stream_frame(sid, self.settings.msg_expired, True)
        content, finish = render(snapshot, now_ms=self.store.now_ms(), notes=self.notes,
                                 queued_after_ms=int(self.settings.queued_note_after_seconds * 1000))
        return stream_frame(sid, content, finish)

    def _scope(self, user: str, chat: str) -> str:
        if not chat:
            return f"u:{user}"
        return f"g:{chat}" if self.settings.conversation_scope == "chat" else f"g:{chat}:u:{user}"

    def _dify_user(self, user: str, chat: str) -> str:
        # Dify scopes conversations by `user`: a conversation shared by a group needs one user.
        if chat and self.settings.conversation_scope == "chat":
            return f"wecom-group:{chat}"
        return f"wecom:{user}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""

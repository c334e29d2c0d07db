"""Handle decrypted AI-bot callbacks: new text messages, stream refreshes, everything else.

Handlers touch only Redis (usually one round trip) and hand new messages to the engine; they never
wait on Dify, MySQL or any other network service.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from services import metrics
from services.bot import Bot
from services.chat_events import EventHandler
from services.delivery import join
from services.engine import Engine, Job
from services.errors import StoreUnavailable
from services.frames import MAX_CONTENT_BYTES, Notes, decide, stream_frame
from services.inbound import MESSAGE_TYPES, read
from services.longconn.outbox import address
from services.streams.keys import new_sid
from utils.logging import user_ref
from utils.payload import as_dict, as_str
from utils.text import strip_mention

log = logging.getLogger(__name__)

Reply = dict[str, Any] | None
Outcome = tuple[Reply, str]
SID = re.compile(r"[0-9a-f]{32}")
MAX_ID_LEN = 256


class MessageHandler:
    """Turn one decrypted callback of one bot into the plaintext reply (None = empty body)."""

    def __init__(self, bot: Bot, engine: Engine) -> None:
        self.bot = bot
        self.settings = settings = bot.settings
        self.store = bot.store
        self.engine = engine
        self.delivery = bot.delivery
        self.events = EventHandler(bot, engine, self)
        self.notes = Notes(
            waiting={"queued": settings.msg_queued, "waiting": settings.msg_waiting_previous,
                      "authenticating": settings.msg_authenticating, "attaching": settings.msg_attaching},
            interrupted=settings.msg_interrupted, window=settings.msg_window,
            window_no_followup=settings.msg_window_no_followup, overflow=settings.msg_overflow,
            overflow_no_followup=settings.msg_overflow_no_followup, progress=settings.progress)

    def handle(self, msg: dict[str, Any]) -> Outcome:
        """Dispatch on ``msgtype``; return the reply and an outcome label for the metrics."""
        msgtype = msg.get("msgtype")
        if msgtype == "stream":
            return self.on_refresh(msg)
        if msgtype == "event":
            return self.events.handle(msg)
        return self.on_message(msg)

    def on_message(self, msg: dict[str, Any]) -> Outcome:
        """Start answering a user's message (once per msgid) and reply with its stream.

        Text and voice are asked as they are, with any quoted text as context; images, files and
        videos (the message's and the quote's) go to Dify as files (``engine/attach.py``). A type
        the bot does not know is answered at once with a text saying what it can take: never silence.
        """
        msgid, user = as_str(msg.get("msgid")), as_str(as_dict(msg.get("from")).get("userid"))
        inbound = read(msg)
        chat = as_str(msg.get("chatid")) if msg.get("chattype") == "group" else ""
        if not msgid or not user or max(len(msgid), len(user), len(chat)) > MAX_ID_LEN:
            log.warning("message callback without a usable msgid, userid or chatid")
            return None, "invalid"
        asked = strip_mention(inbound.text, self.settings.bot_names) if chat else inbound.text.strip()
        unusable = as_str(msg.get("msgtype")) not in MESSAGE_TYPES
        if inbound.has_media and not asked:
            asked = self.settings.media_query  # Dify needs a question with the file
        query = asked
        if asked and inbound.quote:
            parts = {"quote": inbound.quote, "query": asked}  # one pass: a quote may contain "{query}"
            query = re.sub(r"\{(quote|query)\}", lambda m: parts[m.group(1)], self.settings.quote_template)
        response_url = as_str(msg.get("response_url")) or self.follow_up_address(user, chat)
        followup = bool(response_url) and self.delivery.allowed(response_url)
        scope = self.scope(user, chat)
        job = Job(sid=new_sid(scope),  # 32 hex digits, 96 bits of them random: what SID accepts
                  bot=self.bot, msgid=msgid, query=query, dify_user=self.bot.dify_user(user, chat),
                  scope=scope,
                  wecom_user=user, chat=chat, response_url=response_url if followup else "",
                  attachments=inbound.attachments, quoted_attachments=inbound.quoted_attachments,
                  media_keys=dict(inbound.media_keys))
        try:
            if unusable:
                admission = self.engine.answer_now(job, self.settings.msg_unsupported, "unsupported")
            elif asked.lower() in self.settings.stop_words:
                admission = self.engine.stop(job)
            elif asked.lower() in self.settings.new_words and not inbound.has_media:
                job.reset, job.quoted_attachments = True, ()  # queued like a question: after the answers before it
                admission = self.engine.admit(job)
            elif not asked:
                admission = self.engine.answer_now(job, self.settings.msg_empty_query)
            else:
                admission = self.engine.admit(job)
        except StoreUnavailable as exc:  # the cause names the server (host:port or socket), never a password
            log.error("redis unavailable on new message", extra={"msgid": msgid, "cause": str(exc)[:200]})
            return stream_frame(job.sid, self.settings.msg_busy, True), "redis_unavailable"
        sid = admission.sid
        if admission.outcome == "duplicate":
            metrics.DUPLICATES.labels(self.bot.id).inc()
            log.info("duplicate delivery", extra={"msgid": msgid, "sid": sid, "user": user_ref(user)})
            return self._frame_or_busy(sid), "duplicate"
        if admission.outcome != "started":
            return stream_frame(sid, admission.text or self.settings.msg_busy, True), admission.outcome
        extra = {"msgid": msgid, "sid": sid, "user": user_ref(user), "chat": user_ref(chat) if chat else "",
                 "kinds": ",".join(inbound.kinds)}
        if self.settings.log_content:
            extra["content"] = query
        log.info("stream started", extra=extra)
        return stream_frame(sid, "", False, feedback=True), "started"

    def peek(self, sid: str) -> dict[str, Any] | None:
        """The frame a poll of ``sid`` would get, without counting a poll (None: Redis did not answer)."""
        try:
            return self._frame(sid)
        except StoreUnavailable:
            return None

    def _frame_or_busy(self, sid: str) -> dict[str, Any]:
        try:
            frame = self._frame(sid)
            frame["stream"]["feedback"] = {"id": sid}  # a re-delivery's reply may be the first WeCom sees
            return frame
        except StoreUnavailable:
            self.store.note_busy_shown(sid)
            return stream_frame(sid, self.settings.msg_busy, True)

    def on_refresh(self, msg: dict[str, Any]) -> Outcome:
        """Answer a stream refresh with the cumulative content so far."""
        sid = as_str(as_dict(msg.get("stream")).get("id"))
        if not sid:
            return None, "invalid"
        if not SID.fullmatch(sid):  # not one of ours: never touches Redis
            return stream_frame(sid[:MAX_ID_LEN], self.settings.msg_expired, True), "expired"
        try:
            frame = self._frame(sid, poll=True)
        except StoreUnavailable as exc:
            log.error("redis unavailable on refresh", extra={"sid": sid, "cause": str(exc)[:200]})
            self.store.note_busy_shown(sid)  # this frame ends the stream for WeCom: its follow-up must know
            return stream_frame(sid, self.settings.msg_busy, True), "redis_unavailable"
        return frame, "final" if frame["stream"]["finish"] else "partial"

    def _frame(self, sid: str, poll: bool = False) -> dict[str, Any]:
        for _ in range(3):
            snap = self.store.snapshot(sid, max_bytes=MAX_CONTENT_BYTES, poll=poll)
            if snap is None:
                if poll:
                    metrics.STREAMS_ENDED.labels(self.bot.id, "expired").inc()
                return stream_frame(sid, self.settings.msg_expired, True)
            if poll and (snap.finished or snap.final is not None or not snap.owner_alive):
                metrics.POLLS_PER_STREAM.observe(int(snap.meta.get("polls", 1)))
            if poll and snap.finished and snap.meta.get("followup") == "1" and "seen" not in snap.meta:
                try:  # its answer's follow-up needs to know whether WeCom got the last frame
                    self.store.mark_seen(sid)
                except StoreUnavailable:
                    pass  # the answer is shown; the follow-up may then repeat it, never lose it
            poll = False  # count the poll once, even when we look twice
            d = decide(snap, now_ms=self.store.now_ms(), window_ms=int(self.settings.stream_window_seconds * 1000),
                       queued_after_ms=int(self.settings.queued_note_after_seconds * 1000), notes=self.notes)
            if d.action == "close":
                closure = self.store.close(sid, d.reason, d.content, d.shown, finished_ok=snap.finished)
                if closure is None:
                    continue  # the answer finished (or vanished) meanwhile: look again
                metrics.STREAMS_ENDED.labels(self.bot.id, closure.reason).inc()
                log.info("stream closed early", extra={"sid": sid, "reason": closure.reason})
                return stream_frame(sid, closure.final, True)
            if d.action == "interrupt" and not self.store.interrupt_orphan(sid, self.settings.msg_interrupted):
                continue  # its owner finished or renewed meanwhile: look again
            if d.action == "interrupt":
                metrics.STREAMS_ENDED.labels(self.bot.id, "interrupted").inc()
                log.warning("stream interrupted: owner lease lapsed", extra={"sid": sid})
            if d.finish and snap.status == "done" and snap.final is None:  # an answer's own last frame
                return self._last_frame(sid, d.content, snap.meta, card=not snap.note)
            return stream_frame(sid, d.content, d.finish)
        return stream_frame(sid, snap.text if snap else "", False)  # changing under us: finish on a later poll

    def _last_frame(self, sid: str, content: str, meta: dict[str, str], *, card: bool) -> dict[str, Any]:
        """An answer's last frame, with its images (``msg_item``) and (``card``) its questions' or form's card.

        Images that cannot be read any more go as their links (cut first when the frame is full).
        """
        images: list[dict[str, Any]] = []
        if meta.get("images", "0") != "0":
            try:
                images = self.store.images(sid)
            except StoreUnavailable:
                pass
            if not images:
                log.warning("answer images unavailable: sent as links", extra={"sid": sid})
                content = join(content, meta.get("image_links", ""))
        frame = stream_frame(sid, content, True, images)
        try:
            template = json.loads(meta["card"]) if card and "card" in meta else None
        except ValueError:
            template = None
        if isinstance(template, dict):  # once per message, in the last frame (wecom-protocol.md §2.3)
            frame = {"msgtype": "stream_with_template_card", "stream": frame["stream"], "template_card": template}
        return frame

    def follow_up_address(self, user: str, chat: str) -> str:
        """Where a long-connection bot's follow-ups go (its outbox); a callback bot has none of its own."""
        return address(user, chat) if self.settings.wecom_transport == "websocket" else ""

    def scope(self, user: str, chat: str) -> str:
        """The conversation a message belongs to: its user's, or (CONVERSATION_SCOPE=chat) its group's."""
        if not chat:
            return f"u:{user}"
        return f"g:{chat}" if self.settings.conversation_scope == "chat" else f"g:{chat}:u:{user}"

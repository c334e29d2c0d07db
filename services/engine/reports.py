"""What the business side hears of each answer: its record (``RECORDS=mysql``) and its webhook events.

Both go into the bot's Redis backlogs (services/streams/backlog.py) from the engine's loop, never
from a callback's thread, and are written to MySQL or POSTed by their own workers
(services/records/writer.py, services/webhooks/sender.py). Nothing here waits on MySQL or on a
receiver: a full or unreachable backlog is counted and the answer goes on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from services import metrics
from services.bot import Bot
from services.engine.job import Job, Outcome
from services.errors import StoreUnavailable
from services.feedback import Rating
from services.streams.backlog import Backlog
from utils.logging import user_hash

if TYPE_CHECKING:
    from services.engine.engine import Engine

log = logging.getLogger(__name__)

STATUS = {Outcome.FINISHED: "finished", Outcome.FAILED: "failed", Outcome.STOPPED: "stopped",
          Outcome.INTERRUPTED: "interrupted", Outcome.ABANDONED: "interrupted", Outcome.REFUSED: "refused"}
"""A settled job's outcome → its record's status (a finished answer closed early is ``window``/``overflow``)."""


def event_id(bot: str, kind: str, key: str) -> str:
    """The idempotency id of an event: the same for every delivery of it, from any replica."""
    return hashlib.sha256(f"{bot}\n{kind}\n{key}".encode()).hexdigest()[:32]


class Reports:
    """Builds records and events from jobs, and queues them in the bots' backlogs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def received(self, job: Job) -> None:
        """A message's first delivery reached the engine (a command such as ``/new`` is not reported)."""
        if not job.reset and _wants(job.bot, "message.received"):
            data = {"msgid": job.msgid, "stream_id": job.sid, "userid": job.wecom_user, "chatid": job.chat,
                    "query": job.query}
            await self._event(job.bot, "message.received", job.msgid, data)

    async def finished(self, job: Job, outcome: Outcome, note: str) -> None:
        """A job settled: its record, and the ``answer.finished`` event."""
        bot = job.bot
        if job.reset or (bot.records is None and not _wants(bot, "answer.finished")):
            return
        status = STATUS.get(outcome, "interrupted")
        if outcome is Outcome.FINISHED:
            try:
                snap = await self.engine.redis(bot.store.snapshot, job.sid, 0)
                closed = snap.meta.get("closed", "") if snap is not None else ""
                status = closed if closed in ("window", "overflow") else status
            except StoreUnavailable:
                pass
        now = self.engine.clock()
        usage = job.usage
        record: dict[str, Any] = {
            "bot": bot.id, "msgid": job.msgid, "sid": job.sid, "user_hash": user_hash(job.wecom_user),
            "userid": job.wecom_user if bot.settings.records_plain_users else None, "chat": job.chat,
            "query": job.query, "answer": job.writer.text if job.writer is not None else "", "note": note[:1024],
            "status": status, "moderation": job.moderation, "dify_conversation_id": job.conversation_id,
            "dify_message_id": job.message_id, "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"), "total_tokens": usage.get("total_tokens"),
            "total_price": usage.get("total_price"), "currency": usage.get("currency"),
            "dify_latency_ms": _ms(usage.get("latency")),
            "first_content_ms": int((job.first_text_at - job.created) * 1000) if job.first_text_at else None,
            "created_at": int(job.created * 1000), "finished_at": int(now * 1000)}
        if bot.records is not None:
            await self._record(bot, {"kind": "record", "data": json.dumps(record, ensure_ascii=False)})
        if _wants(bot, "answer.finished"):
            data = {k: record[k] for k in ("msgid", "status", "query", "answer", "note", "moderation",
                                           "dify_conversation_id", "dify_message_id", "first_content_ms")}
            data.update(stream_id=job.sid, userid=job.wecom_user, chatid=job.chat, usage=usage)
            await self._event(bot, "answer.finished", job.msgid, data)

    async def rated(self, bot: Bot, rating: Rating) -> None:
        """A user rated an answer (``rating.feedback_id`` is its stream id)."""
        at = int(self.engine.clock() * 1000)
        if bot.records is not None:
            data = {"sid": rating.feedback_id, "rating": rating.rating, "text": rating.content, "at": at}
            await self._record(bot, {"kind": "feedback", "data": json.dumps(data, ensure_ascii=False)})
        if _wants(bot, "feedback"):
            data = {"stream_id": rating.feedback_id, "userid": rating.userid, "rating": rating.rating or "withdrawn",
                    "content": rating.content}
            await self._event(bot, "feedback", f"{rating.feedback_id}\n{rating.rating}\n{at}", data)

    async def _record(self, bot: Bot, fields: dict[str, str]) -> None:
        assert bot.records is not None
        metrics.RECORDS.labels(bot.id, await self._add(bot.records, fields, "queued")).inc()

    async def _event(self, bot: Bot, kind: str, key: str, data: dict[str, Any]) -> None:
        assert bot.webhooks is not None
        event = {"id": event_id(bot.id, kind, key), "type": kind, "bot": bot.id,
                 "time": dt.datetime.fromtimestamp(self.engine.clock(), dt.UTC).isoformat(timespec="milliseconds"),
                 "data": data}
        body = json.dumps(event, ensure_ascii=False)
        at = str(int(self.engine.clock() * 1000))
        for url, backlog in bot.webhooks.items():
            outcome = await self._add(backlog, {"url": url, "event": body, "at": at}, "queued")
            metrics.WEBHOOKS.labels(bot.id, outcome).inc()

    async def _add(self, backlog: Backlog, fields: dict[str, str], ok: str) -> str:
        try:
            return ok if await self.engine.redis(backlog.add, fields) else "overflow"
        except StoreUnavailable:
            log.warning("report not queued: redis unavailable", extra={"backlog": backlog.key.rsplit(":", 1)[-1]})
            return "unavailable"


def _wants(bot: Bot, kind: str) -> bool:
    return bot.webhooks is not None and kind in bot.settings.webhook_kinds


def _ms(seconds: Any) -> int | None:
    try:
        return int(float(seconds) * 1000) if seconds is not None else None
    except (TypeError, ValueError):
        return None

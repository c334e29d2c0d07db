"""WeCom events (wecom-protocol.md §1.7): the welcome on ``enter_chat``, ratings (``feedback_event``)
and clicks on question cards (``template_card_event``). Each is answered within WeCom's 5 s."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from services import metrics
from services.bot import Bot
from services.cards import clicked
from services.engine import Engine, Job
from services.errors import StoreUnavailable
from services.feedback import read_rating, send_rating
from services.streams.keys import new_sid
from services.welcome import WELCOME_WAIT, fallback, welcome
from utils.payload import as_dict, as_str

if TYPE_CHECKING:
    from services.messages import MessageHandler

log = logging.getLogger(__name__)

Outcome = tuple[dict[str, Any] | None, str]
MAX_ID_LEN = 256


class EventHandler:
    """Answer one bot's events; messages stay with ``MessageHandler``."""

    def __init__(self, bot: Bot, engine: Engine, messages: MessageHandler) -> None:
        self.bot, self.engine, self.messages = bot, engine, messages
        self.store = bot.store

    def handle(self, msg: dict[str, Any]) -> Outcome:
        """Dispatch on ``event.eventtype``; any other event gets the empty reply."""
        event = as_dict(msg.get("event"))
        kind = as_str(event.get("eventtype"))
        if kind == "feedback_event":  # only the empty reply is allowed (wecom-protocol.md §2.4)
            return self.on_feedback(msg, event)
        if kind == "enter_chat":
            return self.on_enter_chat()
        if kind == "template_card_event":
            return self.on_card_click(msg, as_dict(event.get("template_card_event")))
        log.info("callback ignored", extra={"msgtype": "event", "eventtype": kind[:64]})
        return None, "ignored"

    def on_enter_chat(self) -> Outcome:
        """Welcome the user: Dify's opening (and questions) when it answers in time, else the fixed text."""
        try:
            reply = self.engine.background.call(self.bot, lambda: welcome(self.engine, self.bot), WELCOME_WAIT)
        except TimeoutError:
            log.warning("welcome: dify's parameters not in time; the fixed text goes")
            reply = fallback(self.bot)
        except Exception:  # noqa: BLE001 - a welcome must never become a 500
            log.exception("welcome failed; the fixed text goes")
            reply = fallback(self.bot)
        return reply, "welcome" if reply else "ignored"

    def on_feedback(self, msg: dict[str, Any], event: dict[str, Any]) -> Outcome:
        """Send a user's rating to Dify (once per msgid, from any replica); the reply is always empty."""
        msgid = as_str(msg.get("msgid"))
        rating = read_rating(event, as_str(as_dict(msg.get("from")).get("userid")))
        if rating is None or not msgid or len(msgid) > MAX_ID_LEN:
            metrics.FEEDBACK.labels(self.bot.id, "invalid").inc()
            return None, "invalid"
        try:
            first = self.store.acquire_lease(self.store.keys.msg(msgid), "feedback", self.store.stream_ttl * 1000)
        except StoreUnavailable:
            metrics.FEEDBACK.labels(self.bot.id, "redis_unavailable").inc()
            return None, "redis_unavailable"
        if not first:
            metrics.FEEDBACK.labels(self.bot.id, "duplicate").inc()
            return None, "duplicate"
        async def rate() -> None:
            await self.engine.reports.rated(self.bot, rating)  # the record and the webhook, whatever Dify says
            await send_rating(self.engine, self.bot, rating)

        self.engine.background.run_soon(self.bot, rate)
        return None, "feedback"

    def on_card_click(self, msg: dict[str, Any], click: dict[str, Any]) -> Outcome:
        """Ask the clicked question (or answer the clicked form) in the user's conversation.

        The card is updated at once; the answer follows through the event's ``response_url`` (a click
        cannot be answered with a stream), once per click msgid.
        """
        msgid, user = as_str(msg.get("msgid")), as_str(as_dict(msg.get("from")).get("userid"))
        chat = as_str(msg.get("chatid")) if msg.get("chattype") == "group" else ""
        response_url = as_str(msg.get("response_url")) or self.messages.follow_up_address(user, chat)
        if not msgid or not user or max(len(msgid), len(user), len(chat)) > MAX_ID_LEN:
            return None, "invalid"
        try:
            found = clicked(self.store, as_str(click.get("task_id")), as_str(click.get("event_key")))
        except StoreUnavailable:
            return None, "redis_unavailable"
        if found is None or not self.bot.delivery.allowed(response_url):
            log.info("card click not answerable (unknown card, or no usable response_url)")
            return None, "ignored"
        s, form = self.bot.settings, found.form or {}
        # a form's run belongs to whoever started it (Dify lets only that user re-attach), in its conversation
        scope = str(form.get("scope") or self.messages.scope(user, chat))
        job = Job(sid=new_sid(scope), bot=self.bot, msgid=msgid, query=found.question or found.label,
                  dify_user=str(form.get("user") or self.bot.dify_user(user, chat)), scope=scope,
                  wecom_user=user, chat=chat, response_url=response_url, polled=False, resume=found.form)
        try:
            admission = self.engine.admit(job)  # a re-delivered click finds its msgid claimed: asked once
        except StoreUnavailable:
            return None, "redis_unavailable"
        if admission.outcome == "busy":  # nothing will follow: leave the card as it was, to be clicked again
            return None, "busy"
        said = s.msg_chosen.replace("{choice}", found.label) if found.form else \
            s.msg_asked.replace("{question}", found.question)
        said = said if len(said) <= 100 else said[:99] + "…"
        title = {**as_dict(found.card.get("main_title")), "desc": said}
        update = {"response_type": "update_template_card", "userids": [user],
                  "template_card": {**found.card, "main_title": title}}
        return update, "card_click" if admission.outcome != "duplicate" else "duplicate"

"""The welcome on ``enter_chat``: Dify's opening statement (or ``WELCOME_TEXT``) and its suggested questions.

WeCom waits 5 s at most (wecom-protocol.md §2.4); the app's parameters usually come from Redis, and
when Dify must be asked and is slow or down, the fixed ``MSG_WELCOME`` goes instead, in time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from services.bot import Bot
from services.cards import clean_questions, keep_card, new_task_id, question_card
from services.engine.parameters import app_parameters
from services.errors import StoreUnavailable

if TYPE_CHECKING:
    from services.engine import Engine

log = logging.getLogger(__name__)

WELCOME_WAIT = 3.0
"""Seconds the welcome may wait for Dify's parameters before the fixed text goes instead."""


async def welcome(engine: Engine, bot: Bot) -> dict[str, Any] | None:
    """The reply to ``enter_chat``: a question card when the app suggests questions, else a text (None: nothing)."""
    s = bot.settings
    parameters = await app_parameters(engine, bot) or {}
    opening = parameters.get("opening_statement")
    text = s.welcome_text or (opening.strip() if isinstance(opening, str) else "") or s.msg_welcome
    questions = clean_questions(parameters.get("suggested_questions"))
    if questions:
        card = question_card(new_task_id(), s.msg_suggestions_title, questions, text)
        try:
            await engine.redis(keep_card, bot.store, card, questions, s.card_ttl_seconds)
            return {"msgtype": "template_card", "template_card": card}
        except StoreUnavailable:
            log.warning("question card not kept: welcome sent as text")
    return {"msgtype": "text", "text": {"content": text}} if text else None


def fallback(bot: Bot) -> dict[str, Any] | None:
    """The fixed welcome, for when Dify cannot be asked in time."""
    text = bot.settings.welcome_text or bot.settings.msg_welcome
    return {"msgtype": "text", "text": {"content": text}} if text else None

"""A user's rating of an answer (WeCom ``feedback_event``) sent to Dify as that message's feedback.

Every answer's first frame carries ``stream.feedback.id`` (its stream id), so WeCom lets the user rate
it (wecom-protocol.md §1.7, §2.2). When the answer's first Dify frame arrived, its ``message_id`` and
``user`` were kept under that id (``Keys.feedback``); any replica can then call
``POST /messages/{message_id}/feedbacks`` as the same user (dify-api.md §6). The event's own reply
is always empty (the only one WeCom accepts); the work runs on the engine's loop, once per msgid.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services import metrics
from services.bot import Bot
from services.dify import error_label
from services.errors import AuthError, DifyError, DifyHTTPError, StoreUnavailable
from utils.payload import as_dict

if TYPE_CHECKING:
    from services.engine import Engine

log = logging.getLogger(__name__)

RATINGS: dict[int, str | None] = {1: "like", 2: "dislike", 3: None}
"""WeCom's ``type`` (1 accurate, 2 inaccurate, 3 withdrawn) → Dify's ``rating``."""
REASONS = {1: "与问题无关", 2: "内容不完整", 3: "内容有误", 4: "数据分析有误"}
"""WeCom's ``inaccurate_reason_list`` codes."""
MAX_CONTENT = 1000


@dataclass(frozen=True)
class Rating:
    """One feedback event, read."""

    feedback_id: str
    rating: str | None
    content: str
    userid: str


def read_rating(event: dict[str, Any], userid: str) -> Rating | None:
    """The rating a ``feedback_event`` carries, or None when it is malformed."""
    body = as_dict(event.get("feedback_event"))
    feedback_id, kind = body.get("id"), body.get("type")
    if not isinstance(feedback_id, str) or not feedback_id or len(feedback_id) > 256 or kind not in RATINGS:
        return None
    reasons = body.get("inaccurate_reason_list")
    named = [REASONS[r] for r in reasons if r in REASONS] if isinstance(reasons, list) else []
    text = body.get("content") if isinstance(body.get("content"), str) else ""
    parts = [f"不准确：{'、'.join(named)}" if named else "", str(text).strip()]
    return Rating(feedback_id, RATINGS[kind], "\n".join(p for p in parts if p)[:MAX_CONTENT], userid)


async def send_rating(engine: Engine, bot: Bot, rating: Rating) -> None:
    """Send ``rating`` to Dify as the rated answer's user; count how it went."""
    try:
        raw = await engine.redis(bot.store.get_value, bot.store.keys.feedback(rating.feedback_id))
    except StoreUnavailable:
        return _count(bot, "redis_unavailable")
    try:
        answer = json.loads(raw) if raw else {}
        message_id, user = str(answer["message_id"]), str(answer["user"])
    except (ValueError, TypeError, KeyError):
        log.info("feedback for an unknown or expired answer")
        return _count(bot, "unknown_answer")
    token = None
    try:
        if bot.settings.dify_auth_source == "user_token" and bot.auth is not None:
            token = (await engine.io(bot, bot.auth.authenticate, rating.userid)).token
        await bot.dify.feedback(message_id, rating=rating.rating, user=user, content=rating.content,
                                authorization=token)
    except AuthError as exc:
        log.warning("feedback not sent: user not authenticated", extra={"reason": type(exc).__name__})
        return _count(bot, "unauthorized")
    except DifyError as exc:
        withdrawn_nothing = rating.rating is None and isinstance(exc, DifyHTTPError) and exc.status == 400
        log.warning("dify refused feedback", extra={"code": error_label(exc)})
        return _count(bot, "nothing_to_withdraw" if withdrawn_nothing else "failed")
    _count(bot, "sent")


def _count(bot: Bot, outcome: str) -> None:
    metrics.FEEDBACK.labels(bot.id, outcome).inc()

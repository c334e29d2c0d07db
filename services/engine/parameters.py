"""A Dify app's ``/parameters`` (file rules, opening statement, suggested questions), cached in Redis.

Every replica shares one copy per bot for ``PARAMETERS_TTL`` seconds, so an app's settings cost one
request per bot every few minutes, not one per message; a change in the app reaches us within it.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from services.bot import Bot
from services.errors import DifyError, StoreUnavailable
from services.streams.keys import PARAMETERS_TTL

if TYPE_CHECKING:
    from services.engine.engine import Engine

log = logging.getLogger(__name__)


async def app_parameters(engine: Engine, bot: Bot, token: str | None = None) -> dict[str, Any] | None:
    """The app's parameters: from Redis, else from Dify (then cached); None when neither can tell."""
    store, key = bot.store, bot.store.keys.dify_parameters()
    try:
        cached = await engine.redis(store.get_value, key)
        if cached is not None:
            value = json.loads(cached)
            if isinstance(value, dict):
                return value
    except (ValueError, StoreUnavailable):  # unreadable, or Redis away: ask Dify
        pass
    try:
        parameters = await bot.dify.parameters(authorization=token)
    except DifyError as exc:
        log.warning("dify parameters unavailable", extra={"code": exc.code})
        return None
    try:
        await engine.redis(store.put_lease, key, json.dumps(parameters), PARAMETERS_TTL * 1000)
    except StoreUnavailable:
        pass  # a cache: the next caller asks again
    return parameters

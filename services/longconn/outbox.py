"""Follow-ups of a long-connection bot: what its ``response_url`` would carry in callback mode.

An answer's producer may run on any replica, but only the holder has the connection. So a follow-up
(the rest of a long answer, an answer past the stream's 6 minutes, a clicked question's answer) is put
in the bot's outbox in Redis, addressed ``wecom-ws:<chat_type>:<chatid>``; the holder sends it as
``aibot_send_msg`` (markdown, or a template card) and takes it out once WeCom acknowledged it.
"""

from __future__ import annotations

import json
from typing import Any

from services.delivery import markdown_message
from services.streams.records import store_errors
from services.streams.store import StreamStore

SCHEME = "wecom-ws:"
OUTBOX_LIFE_MS = 3_600_000
"""A follow-up not sent within an hour is dropped (a callback's response_url lasts as long)."""


def address(user: str, chat: str) -> str:
    """Where a message's follow-up goes: its group (chat_type 2), or its user's single chat (1)."""
    return f"{SCHEME}2:{chat}" if chat else f"{SCHEME}1:{user}"


class Outbox:
    """The ``response_url`` of a long-connection bot: follow-ups queued for its holder to send."""

    def __init__(self, store: StreamStore, bot_id: str) -> None:
        self.store = store
        self.key = store.keys.ws_outbox(bot_id)

    def allowed(self, url: str) -> bool:
        """True for our own addresses (``wecom-ws:``): nothing else is ever called."""
        return url.startswith(SCHEME) and url.count(":") >= 2

    def send(self, url: str, text: str, truncated_note: str) -> bool:
        """Queue ``text`` as one markdown message (cut to 20480 bytes with ``truncated_note``)."""
        return self._queue(url, markdown_message(text, truncated_note))

    def send_card(self, url: str, card: dict[str, Any]) -> bool:
        """Queue a template card."""
        return self._queue(url, {"msgtype": "template_card", "template_card": card})

    def take(self) -> dict[str, Any] | None:
        """The oldest follow-up, taken out (``put_back`` if it could not be sent)."""
        with store_errors():
            raw = self.store.redis.rpop(self.key)
        try:
            item = json.loads(raw) if isinstance(raw, bytes | str) else None
        except ValueError:
            return None
        return item if isinstance(item, dict) else None

    def put_back(self, item: dict[str, Any]) -> None:
        """Return a follow-up that could not be sent to the front of the outbox."""
        with store_errors():
            self.store.redis.rpush(self.key, json.dumps(item, ensure_ascii=False))

    def _queue(self, url: str, body: dict[str, Any]) -> bool:
        if not self.allowed(url):
            return False
        _, chat_type, chatid = url.split(":", 2)
        item = {"chatid": chatid, "chat_type": int(chat_type), **body}
        with store_errors():
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.lpush(self.key, json.dumps(item, ensure_ascii=False))
            pipe.pexpire(self.key, OUTBOX_LIFE_MS)
            pipe.execute()
        return True

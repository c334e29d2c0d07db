"""Every Redis key name the bridge uses, with its TTL and why. No other module builds key strings."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

KEY_LAYOUT = 2
"""The version of the key names below; README "Upgrades" says which versions share a Redis.

1. The names below without hash tags; a stream id is 32 random hex digits.
2. A stream id's first ``GROUP_LEN`` hex digits name its conversation's group (``new_sid``), and on a
   Redis Cluster the keys that one script touches together carry that group, or the bot's id, as a
   hash tag. On one server or Sentinel the names are exactly those of layout 1, so replicas of
   layouts 1 and 2 serve each other's streams during a rolling upgrade.
"""

GROUP_LEN = 8
"""Hex digits of a conversation's group: 4 billion groups spread a cluster's 16384 slots evenly."""

STREAM_TTL = 2 * 3600
"""Stream text + meta + msgid dedupe (``STREAM_TTL_SECONDS``): outlive the 6 min polling window, WeCom's
re-deliveries and a late ``response_url`` delivery (the URL lives 1 h)."""

IMAGES_TTL = 420
"""The images of an answer's last frame: WeCom stops polling 6 minutes after the message, and the images are
stored when the answer ends (they are large: base64 of up to ``ANSWER_IMAGES_MAX_BYTES``)."""
PARAMETERS_TTL = 300
"""Seconds a Dify app's ``/parameters`` stay cached: a change in the app reaches the bridge within it."""

OWNER_LEASE_MS = 15_000
"""Producer lease on a stream (``PRODUCER_LEASE_SECONDS``), renewed every third of it while it works."""

# The auth refresh lock lives as long as the slowest refresh its timeouts allow (user_auth.py); it is
# released by its holder and lapses on its own after a crash. A conversation's ticket queue lives as
# long as a stream and is refreshed with every ticket.


def group_of(scope: str) -> str:
    """The group of a conversation: the hash tag its messages, queue and streams share on a cluster."""
    return hashlib.sha1(scope.encode(), usedforsecurity=False).hexdigest()[:GROUP_LEN]


def new_sid(scope: str) -> str:
    """A new stream id for an answer in ``scope``: its group, then 96 random bits (32 hex digits in all)."""
    return group_of(scope) + uuid.uuid4().hex[GROUP_LEN:]


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix: ``REDIS_KEY_PREFIX``, then the bot's id (``wecomdify:hr:``).

    Each bot has its own ``Keys`` (services/bot.py), so nothing a bot writes can be read through
    another bot. The bot of an environment-only configuration keeps the bare prefix (the names
    from before bots files), so a rolling upgrade keeps its live streams.

    The two ``authorization:*`` templates are shared with other company systems, so they are
    configured verbatim (``AUTH_REDIS_WECHATID_KEY``, ``AUTH_REDIS_TOKEN_KEY``), not prefixed.
    """

    prefix: str
    wechatid_template: str = "authorization:wechatid:{userid}"
    token_template: str = "authorization:token:{token}"  # noqa: S105 - a key template, not a secret
    shared_prefix: str = ""
    """``REDIS_KEY_PREFIX`` alone: for what all bots share (the lock on a user's shared token)."""
    cluster: bool = False
    """On a Redis Cluster: the names carry hash tags (``KEY_LAYOUT`` 2)."""

    @classmethod
    def for_bot(cls, prefix: str, namespace: str, wechatid_template: str, token_template: str, *,
                cluster: bool = False) -> Keys:
        """The keys of one bot: ``prefix`` then its namespace (none: the single bot of the environment)."""
        return cls(f"{prefix}{namespace}:" if namespace else prefix, wechatid_template, token_template, prefix,
                   cluster)

    def _tag(self, part: str) -> str:
        """``part`` as a hash tag on a cluster (keys with the same tag share a slot); unchanged elsewhere."""
        return f"{{{part}}}" if self.cluster else part


    def slot_batches(self, sids: list[str], size: int) -> list[list[str]]:
        """``sids`` in batches of at most ``size`` whose stream keys one script may touch together."""
        groups: dict[str, list[str]] = {}
        for sid in sids:
            groups.setdefault(sid[:GROUP_LEN] if self.cluster else "", []).append(sid)
        return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]

    def _stream(self, sid: str, part: str) -> str:
        return f"{self.prefix}stream:{self._tag(sid[:GROUP_LEN])}{sid[GROUP_LEN:]}:{part}"

    def auth_wechatid(self, userid: str) -> str:
        """Shared key: WeCom userid → the user's token (TTL from the auth API's expiry)."""
        return self.wechatid_template.replace("{userid}", userid)

    def auth_token(self, token: str) -> str:
        """Shared key: token → user info JSON (same TTL as the token)."""
        return self.token_template.replace("{token}", token)

    def auth_unknown(self, userid: str) -> str:
        """Negative cache: this userid is unknown or disabled (TTL ``AUTH_NEGATIVE_TTL_SECONDS``)."""
        return f"{self.prefix}auth:unknown:{userid}"

    def auth_lock(self, userid: str) -> str:
        """Single-flight lock for refreshing one user's token; shared by all bots, like the token."""
        return f"{self.shared_prefix or self.prefix}auth:lock:{userid}"

    def msg(self, msgid: str, sid: str = "") -> str:
        """WeCom msgid → the stream id that answers it (first delivery wins), or a mark that it was handled.

        On a cluster the claim of a message by stream ``sid`` tags it with the stream's group: one
        script writes both, and a re-delivery's new sid has the same group (``new_sid``).
        """
        return f"{self.prefix}msg:{self._tag(sid[:GROUP_LEN]) if self.cluster and sid else ''}{msgid}"

    def stream_text(self, sid: str) -> str:
        """The cumulative answer text of a stream (grown with APPEND)."""
        return self._stream(sid, "text")

    def stream_meta(self, sid: str) -> str:
        """Hash with the stream's status, sequence number, times and note."""
        return self._stream(sid, "meta")

    def stream_images(self, sid: str) -> str:
        """The images (WeCom ``msg_item`` JSON) of a stream's last frame (TTL ``IMAGES_TTL``)."""
        return self._stream(sid, "images")

    def stream_owner(self, sid: str) -> str:
        """Lease of the worker answering a stream; a stream whose lease lapsed was abandoned."""
        return self._stream(sid, "owner")

    def active(self, scope: str) -> str:
        """The stream currently being answered in a conversation (for ``/stop``)."""
        return f"{self.prefix}active:{scope}"

    def conversation(self, scope: str) -> str:
        """Dify conversation id of a user or chat; expires after the idle period."""
        return f"{self.prefix}conv:{scope}"

    def dify_parameters(self) -> str:
        """The bot's Dify ``/parameters`` (its file rules), cached for ``PARAMETERS_TTL``."""
        return f"{self.prefix}dify:parameters"

    def feedback(self, sid: str) -> str:
        """An answer's Dify ``message_id`` and ``user``, for the user's feedback on it (``FEEDBACK_TTL_SECONDS``)."""
        return f"{self.prefix}feedback:{sid}"

    def card(self, task_id: str) -> str:
        """A question card's questions, for its clicks (``CARD_TTL_SECONDS``)."""
        return f"{self.prefix}card:{task_id}"

    def ws_holder(self, bot_id: str) -> str:
        """Which replica holds the bot's long connection, and its term (``owner|fence``; a short lease)."""
        return f"{self.prefix}ws:holder:{self._tag(bot_id)}"

    def ws_fence(self, bot_id: str) -> str:
        """The bot's fencing counter: each new holder term takes the next number (TTL 30 days, renewed)."""
        return f"{self.prefix}ws:fence:{self._tag(bot_id)}"

    def ws_streams(self, bot_id: str) -> str:
        """The bot's live answers pushed over its long connection: sid → its req_id and what was pushed last
        (the hash lives 7 minutes past its last change; WeCom takes updates for 6)."""
        return f"{self.prefix}ws:streams:{self._tag(bot_id)}"

    def ws_refused(self, bot_id: str) -> str:
        """WeCom refused the bot's BotID/Secret: no replica subscribes again for a while (2 minutes)."""
        return f"{self.prefix}ws:refused:{self._tag(bot_id)}"

    def ws_outbox(self, bot_id: str) -> str:
        """Follow-ups for the bot's holder to send (``aibot_send_msg``); an hour past the last."""
        return f"{self.prefix}ws:outbox:{self._tag(bot_id)}"

    def ws_inbox(self, bot_id: str) -> str:
        """Messages the bot's long connection received, for any replica to answer (7 minutes past the last)."""
        return f"{self.prefix}ws:inbox:{self._tag(bot_id)}"

    def records(self) -> str:
        """The bot's records waiting for MySQL (a capped stream; ``RECORDS_BUFFER_TTL_SECONDS`` past the last)."""
        return f"{self.prefix}records"

    def records_purge(self) -> str:
        """Who deletes the records past their retention this hour (one worker of the deployment; an hour)."""
        return f"{self.shared_prefix or self.prefix}records:purge"

    def webhook_events(self, url: str) -> str:
        """The bot's webhook deliveries to ``url`` (a capped stream; a day past the deadline of the last)."""
        return f"{self.prefix}webhooks:{hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:12]}"

    def queue(self, scope: str) -> str:
        """Ticket queue (a list of stream ids) running one conversation's answers in arrival order."""
        return f"{self.prefix}queue:{self._tag(group_of(scope)) if self.cluster else ''}{scope}"

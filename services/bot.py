"""One configured bot at run time: its crypto, its namespaced store, its Dify client, media and delivery.

Every bot of a deployment shares the worker's Redis connection pool and answer engine; what makes
bots separate lives here: its WeCom credentials, its own key namespace (streams, msgid claims,
conversations, queues, leases, the auth negative cache) and its own Dify app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config import BotConfig, Settings
from crypto import WeComCrypto
from services.auth_api import AuthAPI
from services.delivery import ResponseURL
from services.dify import DifyClient
from services.longconn.outbox import Outbox
from services.media import DifyFiles, MediaFetcher
from services.moderation import Moderator, RemoteModeration, WordList
from services.streams.backlog import Backlog
from services.streams.connection import RedisClient, is_cluster, is_sentinel
from services.streams.keys import Keys
from services.streams.store import StreamStore
from services.user_auth import Authenticator
from services.user_db import UserDB


class DifyHealth:
    """What the bot's last Dify answers showed, for ``/readyz``: it costs no request of its own."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._last: tuple[str, float] | None = None  # ("ok" or an error label, when)

    def record(self, outcome: str) -> None:
        """Note how the latest Dify call ended: ``ok`` or an error label."""
        with self._lock:
            self._last = (outcome, self.clock())

    def describe(self) -> str:
        """``unknown`` (no answer yet), ``ok`` or ``failing: <label> (<n> s ago)``."""
        with self._lock:
            last = self._last
        if last is None:
            return "unknown"
        outcome, when = last
        return "ok" if outcome == "ok" else f"failing: {outcome} ({max(0, int(self.clock() - when))} s ago)"


@dataclass
class Bot:
    """Everything that belongs to one bot; built once per app, connecting lazily."""

    id: str
    settings: Settings
    crypto: WeComCrypto | None  # None: a long-connection bot (no callbacks, no message encryption)
    store: StreamStore
    dify: DifyClient
    delivery: ResponseURL | Outbox  # a long-connection bot's follow-ups go through its holder
    namespace: str
    capacity_share: float
    media: MediaFetcher
    answer_files: DifyFiles
    auth: Authenticator | None = None
    health: DifyHealth = field(default_factory=DifyHealth)
    records: Backlog | None = None  # RECORDS=mysql: the records waiting for MySQL
    webhooks: dict[str, Backlog] | None = None  # WEBHOOK_URL: per URL, the events waiting to be POSTed
    moderator: Moderator | None = None  # MODERATION_WORDS_FILE and/or MODERATION_URL

    @classmethod
    def build(cls, config: BotConfig, client: RedisClient, *, users: UserDB | None = None,
              api: AuthAPI | None = None, dify: DifyClient | None = None) -> Bot:
        """Create the bot's clients on the shared Redis ``client`` (and, with AUTH_MODE=mysql, ``users``)."""
        s = config.settings
        crypto = None if s.wecom_transport == "websocket" else WeComCrypto(
            s.wecom_token, s.wecom_encoding_aes_key, s.wecom_receive_id,
            timestamp_window=s.wecom_timestamp_window_seconds or None)
        keys = Keys.for_bot(s.redis_key_prefix, config.namespace, s.auth_redis_wechatid_key, s.auth_redis_token_key,
                            cluster=is_cluster(client))
        store = StreamStore(client, keys, stream_ttl=s.stream_ttl_seconds, replicated_claims=is_sentinel(client),
                            owner_lease_ms=int(s.producer_lease_seconds * 1000))
        auth = None
        if s.auth_mode == "mysql":
            if users is None or api is None:
                raise ValueError(f"bot {config.id} has AUTH_MODE=mysql: it needs the user table and the auth API")
            budget = s.mysql_connect_timeout + s.mysql_read_timeout + (api.retries + 1) * 2 * s.auth_service_timeout
            auth = Authenticator(store, users, api, token_ttl=s.auth_token_ttl_seconds,
                                 negative_ttl=s.auth_negative_ttl_seconds, refresh_budget=budget, bot=config.id)
        if dify is None:
            dify = DifyClient(
                s.dify_base_url, s.dify_api_key,
                response_mode="blocking" if s.dify_response_mode == "blocking" else "streaming",
                connect_timeout=s.dify_connect_timeout, read_timeout=s.dify_read_timeout,
                total_timeout=s.dify_total_timeout, idle_timeout=s.dify_idle_timeout,
                first_output_timeout=s.dify_first_output_seconds,
                max_retries=s.dify_max_retries, max_connections=s.engine_capacity)
        delivery: ResponseURL | Outbox = (
            Outbox(store, s.wecom_bot_id) if s.wecom_transport == "websocket"  # follow-ups through the holder
            else ResponseURL(s.response_url_hosts, timeout=s.response_url_timeout, bot=config.id))
        media = MediaFetcher(s.media_hosts, max_bytes=s.media_max_bytes, timeout=s.media_timeout)
        answer_files = DifyFiles(s.dify_base_url, s.file_hosts, budget=s.answer_images_max_bytes,
                                 timeout=s.media_timeout, failed_note=s.msg_answer_file_failed, bot=config.id)
        return cls(id=config.id, settings=s, crypto=crypto, store=store, dify=dify, delivery=delivery,
                   namespace=config.namespace, capacity_share=config.capacity_share, media=media,
                   answer_files=answer_files, auth=auth, **extensions(config.id, s, store))

    def dify_user(self, user: str, chat: str) -> str:
        """The Dify ``user`` of a message: one per WeCom user, or per group when groups share conversations."""
        ns = f"{self.namespace}:" if self.namespace else ""
        if chat and self.settings.conversation_scope == "chat":
            return f"wecom-group:{ns}{chat}"  # Dify scopes conversations by user: a shared one needs one user
        return f"wecom:{ns}{user}"


WEBHOOK_BACKLOG = 100_000
"""Webhook deliveries a bot's URL's backlog holds at most while its receiver is away (the rest are counted)."""


def extensions(bot_id: str, s: Settings, store: StreamStore) -> dict[str, Any]:
    """A bot's records backlog, webhook backlog and moderator: only those configured (all off by default)."""
    out: dict[str, Any] = {}
    if s.records == "mysql":
        out["records"] = Backlog(store, store.keys.records(), cap=s.records_buffer_max,
                                 ttl_ms=s.records_buffer_ttl_seconds * 1000)
    if s.webhook_urls:
        out["webhooks"] = {url: Backlog(store, store.keys.webhook_events(url), cap=WEBHOOK_BACKLOG,
                                        ttl_ms=(s.webhook_deadline_seconds + 86400) * 1000) for url in s.webhook_urls}
    if s.moderated:
        words = WordList.from_file(s.moderation_words_file) if s.moderation_words_file else None
        remote = RemoteModeration(s.moderation_url, s.moderation_api_key, s.moderation_timeout) \
            if s.moderation_url else None
        out["moderator"] = Moderator(bot_id, words, remote, fail_closed=s.moderation_fail == "closed",
                                     answers=s.moderation_answers, refusal=s.msg_moderation_refused,
                                     replacement=s.moderation_replacement)
    return out

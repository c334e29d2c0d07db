"""Who is asking: WeCom userid → token and user info, through Redis first, MySQL + auth API on a miss.

Fast path (two Redis GETs on keys shared with other company systems):
``authorization:wechatid:{userid}`` → token, ``authorization:token:{token}`` → user info JSON.
On a miss, one engine on one replica refreshes (a Redis lock) while the others wait for
the cache to fill: one MySQL lookup and one auth API call however many messages arrive at once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services import metrics
from services.auth_api import AuthAPI
from services.errors import AuthUnavailable, UserNotAuthorized
from services.streams.connection import RedisClient
from services.streams.keys import Keys
from services.streams.records import store_errors
from services.streams.store import StreamStore
from services.user_db import UserDB

log = logging.getLogger(__name__)

LOCK_POLL = 0.05


@dataclass(frozen=True)
class Identity:
    """An authenticated WeCom user."""

    userid: str
    token: str
    info: dict[str, Any]

    def dify_inputs(self, mapping: Mapping[str, str]) -> dict[str, Any]:
        """Build Dify ``inputs`` from ``{input name: token | userid | user-info field}``."""
        inputs: dict[str, Any] = {}
        for name, source in mapping.items():
            value = {"token": self.token, "userid": self.userid}.get(source, self.info.get(source))
            if value is not None:
                inputs[name] = value if isinstance(value, str | int | float) else json.dumps(value)
        return inputs


class Authenticator:
    """Resolve identities with a Redis cache, single-flight refreshes and negative caching."""

    def __init__(self, store: StreamStore, db: UserDB, api: AuthAPI, *, token_ttl: int, negative_ttl: int,
                 refresh_budget: float = 15.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, bot: str = "default") -> None:
        self.bot = bot  # the metrics label
        self.store = store
        self.redis: RedisClient = store.redis
        self.keys: Keys = store.keys
        self.db = db
        self.api = api
        self.token_ttl = token_ttl
        self.negative_ttl = negative_ttl
        # the lock must outlive the slowest refresh (MySQL + auth API timeouts and retries), or a
        # second replica would refresh too; waiters give up a little after it would have lapsed
        self.lock_ms = int((refresh_budget + 2) * 1000)
        self.wait_seconds = refresh_budget + 5
        self.clock = clock
        self.sleep = sleep

    def authenticate(self, userid: str) -> Identity:
        """Return the user's identity; raises UserNotAuthorized, AuthUnavailable or StoreUnavailable."""
        identity = self._cached(userid)
        if identity is not None:
            metrics.AUTH.labels(self.bot, "hit").inc()
            return identity
        try:
            identity = self._single_flight(userid)
        except UserNotAuthorized:
            metrics.AUTH.labels(self.bot, "refused").inc()
            raise
        except AuthUnavailable:
            metrics.AUTH.labels(self.bot, "unavailable").inc()
            raise
        metrics.AUTH.labels(self.bot, "miss").inc()
        return identity

    def _single_flight(self, userid: str) -> Identity:
        lock, token = self.keys.auth_lock(userid), uuid.uuid4().hex
        deadline = self.clock() + self.wait_seconds
        while True:
            self._raise_if_refused(userid)
            if self.store.acquire_lease(lock, token, self.lock_ms):
                try:
                    return self._cached(userid) or self._refresh(userid)
                finally:
                    self.store.release_lease(lock, token)
            self.sleep(LOCK_POLL)
            identity = self._cached(userid)
            if identity is not None:
                return identity
            if self.clock() > deadline:
                raise AuthUnavailable("timed out waiting for another replica's token refresh")

    def invalidate(self, identity: Identity) -> None:
        """Forget a token that the backend rejected, so the next call refreshes it.

        The user's key is removed only while it still holds that token: a late 401 on another
        replica must not throw away a token that was refreshed meanwhile.
        """
        self.store.release_lease(self.keys.auth_wechatid(identity.userid), identity.token)
        with store_errors():
            self.redis.delete(self.keys.auth_token(identity.token))

    def _cached(self, userid: str) -> Identity | None:
        with store_errors():
            stored = self.redis.get(self.keys.auth_wechatid(userid))
            if not isinstance(stored, bytes) or not stored:
                return None
            token = stored.decode("utf-8", "replace")
            raw = self.redis.get(self.keys.auth_token(token))
        if not raw:
            return None  # the token expired or was revoked by another system
        try:
            info = json.loads(raw)
        except ValueError:
            return None
        return Identity(userid, token, info if isinstance(info, dict) else {})

    def _raise_if_refused(self, userid: str) -> None:
        with store_errors():
            if self.redis.exists(self.keys.auth_unknown(userid)):
                raise UserNotAuthorized("negatively cached")

    def _refresh(self, userid: str) -> Identity:
        record = self.db.find(userid)
        if record is None or not record.enabled:
            self._refuse(userid)
        assert record is not None
        try:
            issued = self.api.issue(record.account, userid)
        except UserNotAuthorized:
            self._refuse(userid)
        ttl = min(issued.expires_in or self.token_ttl, 30 * 86400)
        info = {"userid": userid, "account": record.account, "name": record.display_name, **issued.user}
        with store_errors():
            # the info first: a reader that finds the new token also finds its info (the two shared keys
            # keep their names, so on a cluster they may live on different nodes: no MULTI)
            self.redis.set(self.keys.auth_token(issued.token), json.dumps(info, ensure_ascii=False), ex=ttl)
            self.redis.set(self.keys.auth_wechatid(userid), issued.token, ex=ttl)
        log.info("token refreshed", extra={"ttl": ttl})
        return Identity(userid, issued.token, info)

    def _refuse(self, userid: str) -> Any:
        with store_errors():
            self.redis.set(self.keys.auth_unknown(userid), "1", ex=self.negative_ttl)
        raise UserNotAuthorized("unknown or disabled user")

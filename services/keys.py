"""Every Redis key name the bridge uses, with its TTL and why. No other module builds key strings."""

from __future__ import annotations

from dataclasses import dataclass

DEDUPE_TTL = 2 * 3600
"""msgid → stream id: longer than WeCom's re-delivery horizon and the 1 h ``response_url`` life."""

STREAM_TTL = 2 * 3600
"""Stream text + meta: outlives the 6 min polling window and a late ``response_url`` delivery."""

AUTH_LOCK_MS = 10_000
"""Single-flight token refresh: one producer (on any replica) refreshes; the lock lapses after a crash."""

LANE_LEASE_MS = 30_000
"""Per-conversation lane lock: renewed while its producer works; lapses 30 s after a crash."""


@dataclass(frozen=True)
class Keys:
    """Key names under one configurable prefix (from ``REDIS_KEY_PREFIX``).

    The two ``authorization:*`` templates are shared with other company systems, so they are
    configured verbatim (``AUTH_REDIS_WECHATID_KEY``, ``AUTH_REDIS_TOKEN_KEY``), not prefixed.
    """

    prefix: str
    wechatid_template: str = "authorization:wechatid:{userid}"
    token_template: str = "authorization:token:{token}"  # noqa: S105 - a key template, not a secret

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
        """Single-flight lock for refreshing one user's token."""
        return f"{self.prefix}auth:lock:{userid}"

    def msg(self, msgid: str) -> str:
        """WeCom msgid → the stream id that answers it (first delivery wins)."""
        return f"{self.prefix}msg:{msgid}"

    def stream_text(self, sid: str) -> str:
        """The cumulative answer text of a stream (grown with APPEND)."""
        return f"{self.prefix}stream:{sid}:text"

    def stream_meta(self, sid: str) -> str:
        """Hash with the stream's status, sequence number, times and note."""
        return f"{self.prefix}stream:{sid}:meta"

    def conversation(self, scope: str) -> str:
        """Dify conversation id of a user or chat; expires after the idle period."""
        return f"{self.prefix}conv:{scope}"

    def lane(self, scope: str) -> str:
        """Lock serialising the messages of one conversation across replicas."""
        return f"{self.prefix}lane:{scope}"

"""Client of the company authentication API that issues user tokens.

Contract (documented in the README):
``POST AUTH_SERVICE_URL`` with ``Authorization: Bearer <AUTH_SERVICE_SECRET>`` and JSON
``{"account": "...", "wecom_userid": "..."}`` → 200 ``{"token": "...", "expires_in": 7200,
"user": {...}}`` (``expires_in`` and ``user`` optional). 403/404 mean the account may not use the
bot; anything else that is not 2xx, or a malformed body, is a temporary failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import requests

from services.errors import AuthUnavailable, UserNotAuthorized

_TOKEN = re.compile(r"[\x21-\x7e]{1,2048}")  # printable ASCII, no spaces: it becomes a Redis key


@dataclass(frozen=True)
class IssuedToken:
    """A token from the auth API."""

    token: str
    expires_in: int | None
    user: dict[str, Any] = field(default_factory=dict)


class AuthAPI:
    """Ask the auth API for a user token, authenticating the bridge with its service secret."""

    def __init__(self, url: str, secret: str, *, timeout: float = 5.0,
                 session: requests.Session | None = None, retries: int = 1) -> None:
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self.session = session or requests.Session()
        self.retries = retries

    def issue(self, account: str, wecom_userid: str) -> IssuedToken:
        """Return a fresh token for ``account``; raises UserNotAuthorized or AuthUnavailable."""
        last: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                resp = self.session.post(self.url, json={"account": account, "wecom_userid": wecom_userid},
                                         headers={"Authorization": f"Bearer {self._secret}"},
                                         timeout=(self.timeout, self.timeout))
            except requests.RequestException as exc:
                last = exc
                continue
            with resp:
                if resp.status_code in (403, 404):
                    raise UserNotAuthorized(f"auth API refused the account (HTTP {resp.status_code})")
                if resp.status_code >= 500:
                    last = AuthUnavailable(f"auth API HTTP {resp.status_code}")
                    continue
                if resp.status_code != 200:
                    raise AuthUnavailable(f"auth API HTTP {resp.status_code}")
                return _parse(resp)
        raise AuthUnavailable(f"auth API unreachable: {type(last).__name__}") from last


def _parse(resp: requests.Response) -> IssuedToken:
    try:
        body = resp.json()
    except ValueError as exc:
        raise AuthUnavailable("auth API answered with invalid JSON") from exc
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise AuthUnavailable("auth API answer has no usable token")
    expires = body.get("expires_in")
    expires_in = int(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) \
        and expires > 0 else None
    user = body.get("user")
    return IssuedToken(token, expires_in, user if isinstance(user, dict) else {})

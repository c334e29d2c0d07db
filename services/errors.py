"""Exception trees for the service boundaries (Dify, Redis, authentication).

    DifyError
    ├── DifyConnectionError        could not reach Dify (before any output)
    ├── DifyTimeout                connect/read timeout, total deadline, or only pings for too long
    ├── DifyHTTPError              non-2xx answer; carries status, Dify's ``code`` and ``message``
    ├── DifyStreamError            an ``error`` frame, or a workflow that finished failed/stopped
    ├── DifyIncompleteError        the stream ended (EOF) without a terminal event
    └── DifyStaleConversation      only pings, and Dify no longer knows the conversation (handled in the client)
    StoreUnavailable               Redis cannot be reached or answered with an error
    AuthError                      the user-authentication boundary
    ├── UserNotAuthorized          unknown or disabled user (a final answer, negatively cached)
    └── AuthUnavailable            MySQL or the auth API failed (temporary; retried next message)

Crypto errors live in ``crypto.errors`` and carry WeCom's official codes.
"""

from __future__ import annotations


class DifyError(Exception):
    """Root of everything that can go wrong talking to Dify."""

    code: str = "dify_error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class DifyConnectionError(DifyError):
    """Dify could not be reached."""

    code = "connection_error"


class DifyTimeout(DifyError):
    """A timeout or deadline expired while talking to Dify."""

    code = "timeout"


class DifyHTTPError(DifyError):
    """Dify answered with a non-2xx status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}"


class DifyStreamError(DifyError):
    """Dify reported a failure inside the SSE stream."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class DifyIncompleteError(DifyError):
    """The stream ended without a terminal event."""

    code = "incomplete"


class DifyStaleConversation(DifyError):
    """A stream sent no data while its conversation no longer exists (Dify #37197): ask again without it."""

    code = "stale_conversation"


class StoreUnavailable(Exception):
    """Redis could not be reached, or answered with an error."""


class AuthError(Exception):
    """Root of user-authentication failures."""


class UserNotAuthorized(AuthError):
    """The WeCom user is unknown to the user table or disabled."""


class AuthUnavailable(AuthError):
    """MySQL or the authentication API could not answer."""


class RecordsUnavailable(Exception):
    """The records' MySQL could not be reached or refused a write (the records wait in Redis)."""


class ModerationRefused(Exception):
    """The moderation refused a question: ``text`` is the answer the user gets instead (Dify is not asked)."""

    def __init__(self, text: str) -> None:
        super().__init__("question refused by moderation")
        self.text = text

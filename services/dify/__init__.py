"""Dify: the async service-API client, its byte-level SSE parser and the typed answer events."""

from __future__ import annotations

from services.dify.client import DifyClient
from services.dify.events import (
    AnswerFile,
    ConversationDropped,
    Delta,
    DifyEvent,
    Finished,
    FormRequired,
    Paused,
    Progress,
    Replace,
    Started,
)
from services.errors import DifyError, DifyHTTPError

__all__ = ["AnswerFile", "ConversationDropped", "Delta", "DifyClient", "DifyEvent", "Finished", "FormRequired",
           "Paused", "Progress", "Replace", "Started", "error_label"]

DIFY_CODES = frozenset({
    "invalid_param", "app_unavailable", "not_chat_app", "provider_not_initialize", "provider_quota_exceeded",
    "model_currently_not_support", "completion_request_error", "conversation_completed", "bad_request",
    "unauthorized", "forbidden", "not_found", "too_many_requests", "rate_limit_error", "internal_server_error",
    "file_too_large", "unsupported_file_type", "unsupported_audio_type",
})
"""Dify's documented error codes (dify-api.md §5)."""

OWN_CODES = frozenset({
    "connection_error", "connect_timeout", "timeout", "read_timeout", "idle_timeout", "incomplete",
    "invalid_sse", "invalid_frame", "request_error", "stream_error", "workflow_failed", "workflow_stopped",
    "http_429", "http_502", "http_503", "http_504", "http_4xx", "http_5xx",
})
"""The codes this client gives failures Dify did not name (a gateway page is ``http_<status>``)."""

ERROR_LABELS = DIFY_CODES | OWN_CODES | {"other"}
"""Every value the ``code`` label of the Dify error metric can take: a fixed set, whatever Dify sends."""


def error_label(exc: DifyError) -> str:
    """Map a Dify failure onto ``ERROR_LABELS`` (Dify's own ``code`` strings are open-ended)."""
    code = exc.code
    if code in ERROR_LABELS:
        return code
    if isinstance(exc, DifyHTTPError) and code == f"http_{exc.status}":
        return "http_5xx" if exc.status >= 500 else "http_4xx"
    return "other"

"""JSON-lines logging to stdout; message content and secrets are never passed to it."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

BOT: ContextVar[str] = ContextVar("bot", default="")
"""The bot whose work the current request or engine task does; every log line carries it."""

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_user_mode = "hash"
_user_salt = b""


class Every:
    """Says yes at most once per ``seconds`` (e.g. to log a repeated failure's traceback now and then)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = float("-inf")

    def due(self, now: float) -> bool:
        """True when ``seconds`` have passed since the last yes (or the clock went back); it counts as one."""
        if now - self._last >= self.seconds or now < self._last:
            self._last = now
            return True
        return False


def user_ref(userid: str) -> str:
    """How a WeCom user (or chat) id appears in logs: hashed (default), masked or plain."""
    if not userid or _user_mode == "plain":
        return userid
    if _user_mode == "mask":
        return userid[:2] + "***" + (userid[-2:] if len(userid) > 6 else "")
    return user_hash(userid)


def user_hash(userid: str) -> str:
    """A user (or chat) id keyed-hashed with the deployment's salt: stable, not reversible."""
    return "u_" + hmac.new(_user_salt, userid.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object per line, with extras as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as compact JSON."""
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        if bot := BOT.get():
            out["bot"] = bot
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str, user_ids: str = "hash", salt: str = "") -> None:
    """Send the root logger to stdout as JSON lines at ``level`` (idempotent); set how user ids appear."""
    global _user_mode, _user_salt
    _user_mode, _user_salt = user_ids, salt.encode()
    root = logging.getLogger()
    root.setLevel(level.upper())
    # urllib3's DEBUG lines carry full URLs, and a response_url's query is a one-time credential
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    if not any(getattr(h, "_wecom_dify", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        handler._wecom_dify = True  # type: ignore[attr-defined]
        root.addHandler(handler)

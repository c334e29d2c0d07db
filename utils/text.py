"""Text helpers: UTF-8-safe truncation and stripping the bot's @-mention from group messages."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WS = r"[\s\u2005\u00a0]"  # WeCom puts U+2005 (four-per-em space) after mentions


def utf8_prefix(text: str, max_bytes: int) -> str:
    """Return the longest prefix of ``text`` whose UTF-8 encoding fits ``max_bytes``."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8_suffix(text: str, max_bytes: int) -> str:
    """The longest tail of ``text`` that fits in ``max_bytes`` UTF-8 bytes, cut on a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[len(raw) - max(0, max_bytes):].decode("utf-8", "ignore")


def clean(text: str) -> str:
    """Replace lone surrogates (which UTF-8 cannot carry, e.g. from ASCII-escaped JSON) with U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes."""
    return len(text.encode("utf-8"))


def strip_mention(text: str, bot_names: Sequence[str]) -> str:
    """Remove the bot's @-mention at the start or end of ``text``, leaving e-mails and URLs alone.

    With configured names, an exact ``@Name`` is removed at the start (followed by whitespace or
    the end) and at the very end (WeCom may append it: ``hello@助手``). An e-mail or URL only
    collides if it ends with exactly ``@Name``, which a domain (with its dot) never does.
    Without names, only a leading ``@word`` followed by whitespace is removed.
    """
    stripped = text.strip()
    names = sorted({n.strip() for n in bot_names if n.strip()}, key=len, reverse=True)
    patterns = [p for n in names for p in (rf"^@{re.escape(n)}(?:{_WS}+|$)", rf"@{re.escape(n)}$")]
    if not names:
        patterns = [rf"^@[^\s@]+{_WS}+"]
    changed = True
    while changed and stripped:
        changed = False
        for pattern in patterns:
            new = re.sub(pattern, "", stripped, count=1).strip(" \t\r\n\u2005\u00a0")
            if new != stripped:
                stripped, changed = new, True
    return stripped

"""What a user's WeCom message says: its text, the media it carries, and what it quotes.

Message types (wecom-protocol.md §1.4): ``text``; ``voice`` (WeCom already transcribed it, so its
text is the question); ``mixed`` (text and image items, in order); ``image``, ``file`` and
``video`` (a URL each); and an optional ``quote`` of any of them on a text or mixed message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from utils.payload import as_dict
from utils.text import clean

MESSAGE_TYPES = frozenset({"text", "voice", "mixed", "image", "file", "video"})
MEDIA_TYPES = frozenset({"image", "file", "video"})
MEDIA_MARKERS = {"image": "[图片]", "file": "[文件]", "video": "[视频]"}
"""How quoted media shows in the quoted text, until media reach Dify."""


@dataclass(frozen=True)
class Inbound:
    """One message, read: its text (items joined by newlines), its media types in order, its quote."""

    text: str = ""
    media: tuple[str, ...] = ()
    quote: str = ""  # the quoted message as text, with markers for its media
    kinds: tuple[str, ...] = ()  # what the message was made of, for logs
    attachments: tuple[tuple[str, str], ...] = ()  # (msgtype, URL) of the message's media, in order
    quoted_attachments: tuple[tuple[str, str], ...] = ()  # the quote's: sent along only if they can be
    media_keys: tuple[tuple[str, str], ...] = ()  # (URL, aeskey): long connection media carry their own key

    @property
    def has_media(self) -> bool:
        """True when the message carries an image, a file or a video."""
        return bool(self.media)


def read(msg: dict[str, Any]) -> Inbound:
    """Read a message callback (any ``msgtype``; an unknown one reads as nothing)."""
    text, media, urls = _parts(msg)
    quote_text, quote_media, quote_urls = _parts(as_dict(msg.get("quote")))
    quoted = "\n".join(p for p in (quote_text, *(MEDIA_MARKERS[m] for m in quote_media)) if p)
    msgtype = msg.get("msgtype")
    kind = msgtype if isinstance(msgtype, str) and msgtype in MESSAGE_TYPES else "other"
    kinds = (kind,) + (("quote",) if quoted else ())
    return Inbound(text=text, media=media + quote_media, quote=quoted, kinds=kinds,
                   attachments=tuple(zip(media, urls, strict=True)),
                   quoted_attachments=tuple(zip(quote_media, quote_urls, strict=True)),
                   media_keys=(*_keys(msg), *_keys(as_dict(msg.get("quote")))))


def _keys(msg: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(URL, aeskey) of the media that carry their own key (wecom-protocol.md §1.5, long connection)."""
    items = [msg, *(as_dict(i) for i in as_dict(msg.get("mixed")).get("msg_item") or [] if isinstance(i, dict))]
    found: list[tuple[str, str]] = []
    for item in items:
        kind = item.get("msgtype")
        media = as_dict(item.get(kind)) if isinstance(kind, str) and kind in MEDIA_TYPES else {}
        url, key = media.get("url"), media.get("aeskey")
        if isinstance(url, str) and url and isinstance(key, str) and key:
            found.append((url, key))
    return tuple(found)


def _parts(msg: dict[str, Any]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The text, media types and media URLs of one message (or of a quote, which has the same shape)."""
    msgtype = msg.get("msgtype")
    if not isinstance(msgtype, str):
        return "", (), ()
    if msgtype in ("text", "voice"):
        return _content(msg, msgtype), (), ()
    if msgtype in MEDIA_TYPES:
        return "", (msgtype,), (_url(msg, msgtype),)
    if msgtype == "mixed":
        texts: list[str] = []
        media: list[str] = []
        urls: list[str] = []
        items = as_dict(msg.get("mixed")).get("msg_item")
        for item in items if isinstance(items, list) else []:
            item = as_dict(item)
            kind = item.get("msgtype")
            if kind == "text":
                texts.append(_content(item, "text"))
            elif isinstance(kind, str) and kind in MEDIA_TYPES:
                media.append(kind)
                urls.append(_url(item, kind))
        return "\n".join(t for t in texts if t), tuple(media), tuple(urls)
    return "", (), ()


def _url(msg: dict[str, Any], key: str) -> str:
    raw = as_dict(msg.get(key)).get("url")
    return raw if isinstance(raw, str) else ""


def _content(msg: dict[str, Any], key: str) -> str:
    raw = as_dict(msg.get(key)).get("content")
    return clean(raw) if isinstance(raw, str) else ""

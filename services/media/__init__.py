"""Media: a message's files downloaded and decrypted (``fetch``), told apart (``sniff``), and Dify's files made
showable (``reply``)."""

from services.media.fetch import (
    Media,
    MediaError,
    MediaExpired,
    MediaFetcher,
    MediaRefused,
    MediaTooLarge,
    MediaUnavailable,
    MediaUnreadable,
)
from services.media.reply import DifyFiles, Reply
from services.media.sniff import Kind, sniff

__all__ = ["DifyFiles", "Kind", "Media", "MediaError", "MediaExpired", "MediaFetcher", "MediaRefused", "MediaTooLarge",
           "MediaUnavailable", "MediaUnreadable", "Reply", "sniff"]

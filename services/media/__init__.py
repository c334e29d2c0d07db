"""Media of WeCom messages: downloading and decrypting them (``fetch``), and telling what they are (``sniff``)."""

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
from services.media.sniff import Kind, sniff

__all__ = ["Kind", "Media", "MediaError", "MediaExpired", "MediaFetcher", "MediaRefused", "MediaTooLarge",
           "MediaUnavailable", "MediaUnreadable", "sniff"]

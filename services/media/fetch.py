"""Download a message's media before its URL expires (5 minutes), bounded, and decrypt it.

The URL comes inside an authenticated callback, but it is still an outbound target a message
chose: only allowlisted hosts are called (``WECOM_MEDIA_HOSTS``: ``host``, ``host:port`` or
``*.domain``), over https (plain http only on loopback, for test servers), without following
redirects. The size cap holds while the body streams in, so an oversized file is cut off, never
read whole; connect, read and total deadlines bound the time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import requests
import urllib3

from crypto import WeComCryptoError, decrypt_media
from services.media.sniff import Kind, sniff
from utils.urls import allowed_url, host_set

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
PADDING = 32  # the ciphertext is the file padded to a multiple of 32 bytes


class MediaError(Exception):
    """A message's media could not be used; ``code`` is the metrics label and picks the user's text."""

    code = "media_error"


class MediaRefused(MediaError):
    """The URL's host is not on the allowlist (or the URL is not https)."""

    code = "host_not_allowed"


class MediaExpired(MediaError):
    """WeCom refused the download: the URL expired (5 minutes) or is forbidden."""

    code = "expired"


class MediaTooLarge(MediaError):
    """The file is larger than the cap; the download was cut off."""

    code = "too_large"


class MediaUnreadable(MediaError):
    """The body did not decrypt with the bot's key."""

    code = "undecryptable"


class MediaUnavailable(MediaError):
    """The download failed or took too long (connection, 5xx, timeouts)."""

    code = "unavailable"


@dataclass(frozen=True)
class Media:
    """A downloaded, decrypted file and what its bytes say it is."""

    data: bytes
    kind: Kind


class MediaFetcher:
    """Downloads media from allowlisted hosts with a size cap and deadlines."""

    def __init__(self, hosts: Iterable[str], *, max_bytes: int, timeout: float,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.hosts = host_set(hosts)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.session = session or requests.Session()
        self.clock = clock

    def allowed(self, url: str) -> bool:
        """True when ``url`` may be downloaded: an allowlisted host over https (http only on loopback)."""
        return allowed_url(url, self.hosts)

    def fetch(self, url: str, aes_key: str | bytes) -> Media:
        """Download ``url``, decrypt it with ``aes_key`` and sniff it; raises a MediaError."""
        if not self.allowed(url):
            raise MediaRefused("media host not allowed")
        data = self._download(url)
        try:
            plain = decrypt_media(aes_key, data)
        except WeComCryptoError:
            raise MediaUnreadable("media did not decrypt with the bot's key") from None
        return Media(plain, sniff(plain))

    def _download(self, url: str) -> bytes:
        return download(self.session, url, limit=self.max_bytes + PADDING, timeout=self.timeout, clock=self.clock)


def download(session: requests.Session, url: str, *, limit: int, timeout: float,
             clock: Callable[[], float] = time.monotonic) -> bytes:
    """GET ``url`` (no redirects), cut off past ``limit`` bytes or ``timeout`` seconds; raises a MediaError."""
    deadline = clock() + timeout
    step = min(timeout, 5.0)  # connect, and each read: a silent server fails within it
    try:
        with session.get(url, stream=True, timeout=(step, step), allow_redirects=False,
                         headers={"Accept-Encoding": "identity"}) as resp:  # the bytes as stored
            if resp.status_code in (401, 403, 404, 410):
                raise MediaExpired(f"download refused: HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise MediaUnavailable(f"download failed: HTTP {resp.status_code}")
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise MediaTooLarge(f"a file of {declared} bytes is over the cap")
            body = bytearray()
            # read1: whatever one socket read brings, so a trickle cannot outlast the deadline
            while chunk := resp.raw.read1(CHUNK):
                body += chunk
                if len(body) > limit:
                    raise MediaTooLarge("file over the cap")
                if clock() > deadline:
                    raise MediaUnavailable("download took too long")
            return bytes(body)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise MediaUnavailable(f"download failed: {type(exc).__name__}") from None

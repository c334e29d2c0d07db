"""Dify's files, made into what WeCom can show: images in the last stream frame, the rest as links.

WeCom's last stream frame carries up to 10 images (``msg_item``), each a JPG or PNG of at most
10 MB, as base64 with the md5 of the raw bytes (wecom-protocol.md §2.2). Dify names its files by
URL, often relative to its own base (signed ``/files/tools/…`` URLs, dify-api.md §3.3). An image
is downloaded from Dify's own origin or from an allowlisted host (``DIFY_FILE_HOSTS``), bounded
like any download. An image that cannot go inline (another format, too large, past the count or
the byte budget, a host we may not call) becomes a markdown image link; a file that is not an
image, a markdown link; one that could not be fetched, a link with a note; one whose URL is not an
http(s) URL, its name alone. Nothing is dropped, and no URL from an answer is followed elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests

from services import metrics
from services.dify import AnswerFile
from services.media.fetch import MediaError, MediaTooLarge, download
from services.media.sniff import sniff
from utils.urls import allowed_url, host_set, same_origin

log = logging.getLogger(__name__)

MAX_IMAGES = 10
"""Images one stream frame may carry (wecom-protocol.md §2.2)."""

IMAGE_MAX_BYTES = 10 * 1000 * 1000
"""WeCom's limit on one image ("10 MB"; read as decimal megabytes, the smaller reading)."""

INLINE_MIMES = frozenset({"image/jpeg", "image/png"})


@dataclass(frozen=True)
class Reply:
    """What an answer's files become."""

    images: list[dict[str, Any]] = field(default_factory=list)  # ``msg_item`` entries for the last frame
    image_links: str = ""  # the same images as markdown image links, for a message that cannot carry them
    text: str = ""  # what the answer's text gains: links to files, and to images not shown inline


class DifyFiles:
    """Fetch and render one Dify app's answer files."""

    def __init__(self, base_url: str, hosts: Iterable[str], *, budget: int, timeout: float, failed_note: str,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic,
                 bot: str = "default") -> None:
        self.base_url = base_url
        self.hosts = host_set(hosts)
        self.budget = budget  # raw image bytes one answer may carry inline
        self.timeout = timeout  # for all of an answer's downloads together
        self.failed_note = failed_note  # contains {link}
        self.session = session or requests.Session()
        self.clock = clock
        self.bot = bot

    def resolve(self, url: str) -> str | None:
        """The absolute http(s) URL of a Dify file (``/files/tools/…`` is relative to Dify's origin), else None."""
        try:
            absolute = urljoin(self.base_url, url.strip())
            parts = urlsplit(absolute)
        except ValueError:
            return None
        return absolute if parts.scheme in ("http", "https") and parts.hostname else None

    def allowed(self, url: str) -> bool:
        """True when ``url`` may be downloaded: a file of Dify's own origin, or an allowlisted host over https."""
        if same_origin(url, self.base_url):
            return "/files/" in urlsplit(url).path  # Dify's file routes, not its API
        return allowed_url(url, self.hosts)

    def prepare(self, files: Sequence[AnswerFile], *, inline: bool = True) -> Reply:
        """Download what can be shown inline and render the rest as links, in the answer's order.

        Without ``inline`` (e.g. while the worker drains) nothing is downloaded: images become links.
        """
        deadline = self.clock() + self.timeout
        images: list[dict[str, Any]] = []
        shown: list[str] = []
        lines: list[str] = []
        used = 0
        for f in files:
            url = self.resolve(f.url)
            if url is None:  # not a URL anyone could open: the name alone says a file was made
                lines.append(_name(f, ""))
                self._count("unlinkable")
                continue
            name, target = _name(f, url), _target(url)
            if not (f.type == "image" or f.mime.startswith("image/")):
                lines.append(f"[{name}]({target})")
                self._count("file_linked")
                continue
            link = f"![{name}]({target})"
            allowed = self.allowed(url)
            room = min(IMAGE_MAX_BYTES, self.budget - used) if inline else 0
            left = deadline - self.clock()
            if not allowed or len(images) >= MAX_IMAGES or room <= 0 or left <= 0:
                lines.append(link)
                self._count("image_linked" if allowed else "host_not_allowed")
                continue
            try:
                data = download(self.session, url, limit=room, timeout=left, clock=self.clock)
            except MediaTooLarge:
                lines.append(link)
                self._count("image_linked")
                continue
            except MediaError as exc:
                log.warning("answer file not fetched", extra={"code": exc.code})
                lines.append(self.failed_note.replace("{link}", f"[{name}]({target})"))
                self._count("failed")
                continue
            if sniff(data).mime not in INLINE_MIMES:
                lines.append(link)
                self._count("image_linked")
                continue
            images.append({"msgtype": "image", "image": {"base64": base64.b64encode(data).decode("ascii"),
                                                         "md5": hashlib.md5(data, usedforsecurity=False).hexdigest()}})
            shown.append(link)
            used += len(data)
            self._count("inline")
        return Reply(images=images, image_links="\n".join(shown), text="\n".join(lines))

    def _count(self, outcome: str) -> None:
        metrics.ANSWER_FILES.labels(self.bot, outcome).inc()


def _name(f: AnswerFile, url: str) -> str:
    """A file's name for a link's text: Dify's, else the URL's last segment; markdown's brackets removed."""
    name = f.name or unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or f.type
    cleaned = "".join(" " if c in "[]()\r\n" or not c.isprintable() else c for c in name).strip()
    return cleaned[:100] or "file"


def _target(url: str) -> str:
    """``url`` made safe inside markdown's ``(…)``: whitespace, controls, parentheses and angle brackets escaped."""
    return quote(url, safe="/:?#[]@!$&'*+,;=%~")

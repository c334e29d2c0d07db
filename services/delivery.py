"""Active replies through a message's ``response_url`` (wecom-protocol.md §3).

The URL arrives inside the (authenticated) callback, but it is still an outbound target chosen by
the message: only hosts in ``WECOM_RESPONSE_URL_HOSTS`` are called, over https (plain http only
for loopback test servers). A URL works once, so a request that may have reached WeCom is never
repeated: only connection failures and 5xx answers are retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import requests

from config import Settings
from services import metrics
from services.frames import MAX_CONTENT_BYTES, fit
from services.streams.store import StreamStore
from utils.urls import allowed_url, host_set

log = logging.getLogger(__name__)


class ResponseURL:
    """Send one markdown message to a ``response_url``."""

    def __init__(self, hosts: list[str], *, timeout: float = 5.0, retries: int = 2,
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                 bot: str = "default") -> None:
        self.bot = bot  # the metrics label
        self.hosts = host_set(hosts)
        self.timeout = timeout
        self.retries = retries
        self.session = session or requests.Session()
        self.sleep = sleep

    def allowed(self, url: str) -> bool:
        """True when ``url`` may be called: an allowlisted host over https (http only on loopback)."""
        return allowed_url(url, self.hosts)

    def send(self, url: str, text: str, truncated_note: str) -> bool:
        """POST ``text`` as one markdown message (cut to 20480 bytes with ``truncated_note``)."""
        return self._post(url, markdown_message(text, truncated_note))

    def send_card(self, url: str, card: dict[str, Any]) -> bool:
        """POST a template card (WeCom takes one only in a single chat, wecom-protocol.md §3)."""
        return self._post(url, {"msgtype": "template_card", "template_card": card})

    def _post(self, url: str, body: dict[str, Any]) -> bool:
        if not self.allowed(url):
            self._count("refused")
            log.warning("response_url host not allowed")
            return False
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.post(url, json=body, timeout=(self.timeout, self.timeout),
                                         allow_redirects=False)
            except requests.ConnectionError:
                outcome = "connection_error"
            except requests.RequestException:
                self._count("unknown")  # it may have arrived: never send twice
                log.warning("response_url delivery outcome unknown")
                return False
            else:
                with resp:
                    if resp.status_code < 300 and _errcode(resp) == 0:
                        self._count("delivered")
                        return True
                    outcome = f"http_{resp.status_code}"
                    if resp.status_code < 500:
                        break
            if attempt < self.retries:
                self.sleep(0.5 * 2**attempt)
        self._count("failed")
        log.warning("response_url delivery failed", extra={"outcome": outcome})
        return False

    def _count(self, outcome: str) -> None:
        metrics.RESPONSE_URL.labels(self.bot, outcome).inc()


def markdown_message(text: str, truncated_note: str) -> dict[str, Any]:
    """``text`` as one markdown message, cut to WeCom's 20480 bytes with ``truncated_note`` when longer."""
    content = fit(text, truncated_note)[0] if len(text.encode("utf-8")) > MAX_CONTENT_BYTES else text
    return {"msgtype": "markdown", "markdown": {"content": content}}


def _errcode(resp: requests.Response) -> int:
    """WeCom answers ``{"errcode":0,"errmsg":"ok"}``; a body without errcode counts as success."""
    try:
        body = resp.json()
    except ValueError:
        return 0
    code = body.get("errcode", 0) if isinstance(body, dict) else 0
    return code if isinstance(code, int) else 0


def send_rest(store: StreamStore, delivery: ResponseURL, sid: str, url: str, note: str, settings: Settings) -> None:
    """After an answer ended, send through ``url`` what its stream could not show, at most once.

    A stream closed by the window gets the whole answer (or, when that is longer than one message,
    the part after what it showed); one that outgrew a frame gets the rest after what it showed (it
    is closed here when the finished text plus ``note`` does not fit). A stream that showed
    everything gets nothing; an interrupted one only if it had promised a follow-up. A stream that
    some replica answered "busy" (Redis was away) and that no poll showed finished since, was
    ended there for WeCom: it gets the whole answer. Images its last frame did not carry go as
    markdown image links.
    """
    if not delivery.allowed(url):
        return
    snap = store.snapshot(sid)
    if snap is None:
        return
    reason, shown = snap.meta.get("closed", ""), int(snap.meta.get("shown", 0) or 0)
    images = snap.meta.get("image_links", "")  # a message cannot carry images: their links go instead
    if snap.final is None and "busy" in snap.meta and "seen" not in snap.meta:
        whole_answer = join(snap.text, images, note)
        if whole_answer and store.mark_delivered(sid):
            delivery.send(url, whole_answer, settings.msg_truncated)
        return
    if snap.final is None:
        if snap.status == "interrupted" or fit(snap.text, note)[1] == len(snap.text):
            return  # the last frame shows the whole answer (or says it was interrupted)
        closure = store.close(sid, "overflow", *fit(snap.text, settings.msg_overflow), finished_ok=True)
        if closure is None:
            return
        reason, shown = closure.reason, closure.shown
    whole = reason == "window" and len(snap.text.encode("utf-8")) <= MAX_CONTENT_BYTES
    rest = join(snap.text if whole else snap.text[shown:], images, note)
    if rest and store.mark_delivered(sid):
        delivery.send(url, rest, settings.msg_truncated)



def join(*parts: str) -> str:
    """The non-empty ``parts`` as paragraphs of one message."""
    return "\n\n".join(p for p in parts if p)

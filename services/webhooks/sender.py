"""Delivers the bots' webhook events: a background service of each worker (only when a bot has WEBHOOK_URL).

Events wait in each bot's Redis backlog, one entry per URL (services/engine/reports.py adds them).
A delivery is a signed POST with a timeout, to an allowed host, never following a redirect; a 2xx
marks it done. Anything else is tried again after 1, 2, 4 … 300 s with the same event id, until
``WEBHOOK_DEADLINE_SECONDS`` after the event, then counted as expired. The POSTs run on this
service's own threads, so a receiver that hangs delays no answer; a worker that dies leaves its
events to another after ``RETRY_AFTER_MS``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests

from services import metrics
from services.bot import Bot
from services.errors import StoreUnavailable
from services.streams.backlog import Entry
from services.webhooks.signature import SIGNATURE, TIMESTAMP, sign

if TYPE_CHECKING:
    from services.engine.engine import Engine

log = logging.getLogger(__name__)

SENDERS = 4
"""POSTs in flight at once per worker (its own threads)."""
BATCH = 50
BACKOFF_MAX = 300.0
IDLE = 0.5
KEEP_EVERY = 10.0
"""Well within the backlog's RETRY_AFTER_MS: a living worker's retries stay its own."""


@dataclass
class Delivery:
    """One event to one URL, as this worker has it: when to try next, and how often it was tried."""

    bot: Bot
    entry: Entry
    due: float
    attempts: int = 0


class WebhookSender:
    """POSTs ``bots``' queued events; keeps the failed ones (still pending in Redis) until they are due."""

    def __init__(self, engine: Engine, bots: Mapping[str, Bot], session: requests.Session | None = None) -> None:
        self.engine = engine
        self.bots = [bot for bot in bots.values() if bot.webhooks is not None]
        self.session = session or requests.Session()
        self._threads = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhooks")
        self._held: dict[str, Delivery] = {}  # entry id → its delivery
        self._stopped = False
        self._kept_at = float("-inf")
        self._failed_at = float("-inf")

    async def run(self) -> None:
        """Take, send and settle deliveries until stopped."""
        while not self._stopped:
            try:
                for bot in self.bots:
                    await self._take(bot)
                await self._keep()
                due = [d for d in self._held.values() if d.due <= self.engine.clock()][:SENDERS * 4]
                results = await asyncio.gather(*[self._deliver(d) for d in due])
                expired = [d for d, ok in zip(due, results, strict=True) if not ok and self._expired(d)]
                for d in expired:
                    metrics.WEBHOOKS.labels(d.bot.id, "expired").inc()
                    log.warning("webhook expired undelivered", extra={"attempts": d.attempts})
                await self._settle([d for d, ok in zip(due, results, strict=True) if ok] + expired)
            except StoreUnavailable:
                log.warning("webhooks wait: redis unavailable")
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - a bug must not end the sender: the events would pile up
                if self.engine.clock() - self._failed_at >= 60:  # the traceback once a minute while it lasts
                    self._failed_at = self.engine.clock()
                    log.exception("webhook sender failed; retrying")
                await asyncio.sleep(1.0)
            await asyncio.sleep(0 if any(d.due <= self.engine.clock() for d in self._held.values()) else IDLE)

    async def stop(self) -> None:
        """Stop; what is not delivered stays in Redis for any worker."""
        self._stopped = True

    async def _take(self, bot: Bot) -> None:
        assert bot.webhooks is not None
        if len(self._held) >= BATCH * 4:
            return  # busy enough: the rest waits in Redis
        for entry in await self.engine.redis(partial(bot.webhooks.take, own=False), self.engine.owner, BATCH):
            self._held.setdefault(entry.id, Delivery(bot, entry, self.engine.clock()))

    async def _keep(self) -> None:
        """Every ``KEEP_EVERY`` s, claim the deliveries waiting for a retry again: no other worker takes them."""
        if self.engine.clock() - self._kept_at < KEEP_EVERY:
            return
        self._kept_at = self.engine.clock()
        for bot in self.bots:
            assert bot.webhooks is not None
            waiting = [d.entry.id for d in self._held.values() if d.bot is bot and d.attempts]
            await self.engine.redis(bot.webhooks.keep, self.engine.owner, waiting)

    async def _deliver(self, d: Delivery) -> bool:
        """Send one delivery; True when the receiver took it (2xx)."""
        ok = await asyncio.get_running_loop().run_in_executor(self._threads, self._post, d)
        d.attempts += 1
        if not ok:
            d.due = self.engine.clock() + min(2.0 ** (d.attempts - 1), BACKOFF_MAX)
            if not self._expired(d):
                metrics.WEBHOOKS.labels(d.bot.id, "retried").inc()
        return ok

    def _post(self, d: Delivery) -> bool:
        s, url, body = d.bot.settings, d.entry.fields.get("url", ""), d.entry.fields.get("event", "").encode()
        if urlsplit(url).netloc not in s.webhook_allowed_hosts:
            metrics.WEBHOOKS.labels(d.bot.id, "refused").inc()
            log.warning("webhook refused: host not allowed")
            return False
        timestamp = int(self.engine.clock())
        try:
            event = json.loads(body)
        except ValueError:
            return True  # unreadable: nothing to deliver, ever
        headers = {"Content-Type": "application/json", TIMESTAMP: str(timestamp),
                   SIGNATURE: sign(s.webhook_secret, timestamp, body), "X-WeComDify-Event": str(event.get("type")),
                   "X-WeComDify-Event-Id": str(event.get("id")), "User-Agent": "wecom-dify-bridge"}
        try:
            with self.session.post(url, data=body, headers=headers, timeout=s.webhook_timeout,
                                   allow_redirects=False, stream=True) as resp:
                ok = 200 <= resp.status_code < 300
                log.info("webhook delivery", extra={"status": resp.status_code, "event": event.get("type")})
        except requests.RequestException as exc:
            log.info("webhook delivery failed", extra={"reason": type(exc).__name__, "event": event.get("type")})
            return False
        if ok:
            metrics.WEBHOOKS.labels(d.bot.id, "delivered").inc()
        return ok

    def _expired(self, d: Delivery) -> bool:
        at = int(d.entry.fields.get("at") or 0) / 1000
        return self.engine.clock() - at > d.bot.settings.webhook_deadline_seconds

    async def _settle(self, finished: list[Delivery]) -> None:
        by_bot: dict[str, list[Delivery]] = {}
        for d in finished:
            self._held.pop(d.entry.id, None)
            by_bot.setdefault(d.bot.id, []).append(d)
        for group in by_bot.values():
            backlog = group[0].bot.webhooks
            assert backlog is not None
            await self.engine.redis(backlog.done, [d.entry.id for d in group])

"""Delivers the bots' webhook events: a background service of each worker (only when a bot has WEBHOOK_URL).

Each URL of each bot has its own Redis backlog (a lane; services/engine/reports.py adds the events).
A delivery is a signed POST with a timeout, to an allowed host, never following a redirect; a 2xx
marks it done. Anything else is tried again after 1, 2, 4 … 300 s with the same event id, until
``WEBHOOK_DEADLINE_SECONDS`` after the event, then counted as expired. The POSTs run as tasks on
this service's own threads, at most ``PER_LANE`` at once per URL, so a receiver that hangs delays no
answer and no other receiver. A worker holds at most ``HELD`` deliveries per URL and claims them
again every ``KEEP_EVERY`` s; one that dies leaves them to another after ``RETRY_AFTER_MS``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import requests

from services import metrics
from services.bot import Bot
from services.errors import StoreUnavailable
from services.streams.backlog import Backlog, Entry
from services.webhooks.signature import SIGNATURE, TIMESTAMP, sign
from utils.logging import Every
from utils.urls import host_of

if TYPE_CHECKING:
    from services.engine.engine import Engine

log = logging.getLogger(__name__)

THREADS = 8
PER_LANE = 2
"""POSTs in flight at once to one URL: a dead receiver holds no more than these of the threads."""
HELD = 100
BACKOFF_MAX = 300.0
IDLE = 0.2
KEEP_EVERY = 10.0
"""Well within the backlog's RETRY_AFTER_MS: a living worker's deliveries stay its own."""


@dataclass
class Lane:
    """One URL of one bot: its backlog, and the deliveries this worker holds from it."""

    bot: Bot
    url: str
    backlog: Backlog
    held: dict[str, Delivery] = field(default_factory=dict)
    sending: int = 0


@dataclass
class Delivery:
    """One event to one URL, as this worker has it: when to try next, and how often it was tried."""

    lane: Lane = field(repr=False)  # (the lane holds its deliveries: no endless repr)
    entry: Entry
    due: float
    attempts: int = 0
    sending: bool = False


class WebhookSender:
    """POSTs ``bots``' queued events, URL by URL; keeps the failed ones (pending in Redis) until they are due."""

    def __init__(self, engine: Engine, bots: Mapping[str, Bot], session: requests.Session | None = None) -> None:
        self.engine = engine
        self.lanes = [Lane(bot, url, backlog) for bot in bots.values() for url, backlog in (bot.webhooks or {}).items()]
        self.session = session or requests.Session()
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="webhooks")
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._kept_at = float("-inf")
        self._tracebacks = Every(60.0)  # once a minute while it lasts

    async def run(self) -> None:
        """Take, send and settle deliveries until stopped."""
        while not self._stopped:
            try:
                for lane in self.lanes:
                    await self._take(lane)
                await self._keep()
                self._launch()
            except StoreUnavailable:
                log.warning("webhooks wait: redis unavailable")
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - a bug must not end the sender: the events would pile up
                if self._tracebacks.due(self.engine.clock()):
                    log.exception("webhook sender failed; retrying")
                await asyncio.sleep(1.0)
            await asyncio.sleep(IDLE)

    async def stop(self) -> None:
        """Stop taking; what is not delivered stays in Redis for any worker."""
        self._stopped = True

    async def _take(self, lane: Lane) -> None:
        if len(lane.held) >= HELD:
            return  # this URL has enough waiting here: the rest waits in Redis
        entries = await self.engine.redis(partial(lane.backlog.take, own=False), self.engine.owner,
                                          HELD - len(lane.held))
        for entry in entries:
            lane.held.setdefault(entry.id, Delivery(lane, entry, self.engine.clock()))

    async def _keep(self) -> None:
        """Every ``KEEP_EVERY`` s, claim every held delivery again: no other worker takes it meanwhile."""
        if self.engine.clock() - self._kept_at < KEEP_EVERY:
            return
        self._kept_at = self.engine.clock()
        for lane in self.lanes:
            await self.engine.redis(lane.backlog.keep, self.engine.owner, list(lane.held))

    def _launch(self) -> None:
        now = self.engine.clock()
        for lane in self.lanes:
            for d in list(lane.held.values()):
                if lane.sending >= PER_LANE:
                    break
                if not d.sending and d.due <= now:
                    d.sending, lane.sending = True, lane.sending + 1
                    task = asyncio.get_running_loop().create_task(self._send(d))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _send(self, d: Delivery) -> None:
        bot, lane = d.lane.bot, d.lane
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(self._threads, self._post, d)
            d.attempts += 1
            expired = outcome == "retry" and self._expired(d)
            if outcome == "retry" and not expired:
                d.due = self.engine.clock() + min(2.0 ** (d.attempts - 1), BACKOFF_MAX)
                metrics.WEBHOOKS.labels(bot.id, "retried").inc()
                return
            metrics.WEBHOOKS.labels(bot.id, "expired" if expired else outcome).inc()
            if expired:
                log.warning("webhook expired undelivered", extra={"attempts": d.attempts})
            lane.held.pop(d.entry.id, None)
            await self.engine.redis(lane.backlog.done, [d.entry.id])
        except StoreUnavailable:
            pass  # still pending in Redis: taken again once stale (at least once)
        finally:
            d.sending, lane.sending = False, lane.sending - 1

    def _post(self, d: Delivery) -> str:
        """POST one delivery: ``delivered``, ``refused`` (never to be sent) or ``retry``."""
        s, url, body = d.lane.bot.settings, d.entry.fields.get("url", d.lane.url), d.entry.fields.get("event", "")
        if host_of(url) not in s.webhook_allowed_hosts:
            log.warning("webhook refused: host not allowed")
            return "refused"
        try:
            event = json.loads(body)
        except ValueError:
            return "refused"  # unreadable: nothing to deliver, ever
        raw, timestamp = body.encode(), int(self.engine.clock())
        headers = {"Content-Type": "application/json", TIMESTAMP: str(timestamp),
                   SIGNATURE: sign(s.webhook_secret, timestamp, raw), "X-WeComDify-Event": str(event.get("type")),
                   "X-WeComDify-Event-Id": str(event.get("id")), "User-Agent": "wecom-dify-bridge"}
        try:
            with self.session.post(url, data=raw, headers=headers, timeout=s.webhook_timeout,
                                   allow_redirects=False, stream=True) as resp:
                status = resp.status_code
        except requests.RequestException as exc:
            log.info("webhook delivery failed", extra={"reason": type(exc).__name__, "event": event.get("type")})
            return "retry"
        log.info("webhook delivery", extra={"status": status, "event": event.get("type")})
        return "delivered" if 200 <= status < 300 else "retry"

    def _expired(self, d: Delivery) -> bool:
        at = int(d.entry.fields.get("at") or 0) / 1000
        return self.engine.clock() - at > d.lane.bot.settings.webhook_deadline_seconds

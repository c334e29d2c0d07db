"""Writes the bots' queued records to MySQL: a background service of each worker (only with RECORDS=mysql).

Records wait in each bot's Redis backlog (services/engine/reports.py adds them). Every worker takes
batches, writes each batch in one transaction and only then marks it done, so a MySQL outage leaves
them in Redis (within the backlog's cap and TTL) until MySQL answers again; a batch written twice
changes nothing (unique bot + msgid). MySQL calls run on this service's own thread, never on the
engine's, so a hung MySQL slows no answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from services import metrics
from services.bot import Bot
from services.errors import RecordsUnavailable, StoreUnavailable
from services.records.db import RecordDB
from services.streams.backlog import Entry
from utils.logging import Every

if TYPE_CHECKING:
    from services.engine.engine import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH = 200
IDLE = 0.5
"""Seconds between looks at an empty backlog."""
BACKOFF_MAX = 30.0
FEEDBACK_PATIENCE_MS = 10 * 60_000
"""A rating whose record is not in MySQL after this long is dropped (the record was lost or refused)."""
PURGE_EVERY = 3600.0
RATING_RETRY_MS = 5000


class RecordWriter:
    """Drains ``bots``' record backlogs into ``db``, and deletes records past their retention."""

    def __init__(self, engine: Engine, bots: Mapping[str, Bot], db: RecordDB, *, retention_days: int = 0) -> None:
        self.engine, self.db, self.retention_days = engine, db, retention_days
        self.bots = [bot for bot in bots.values() if bot.records is not None]
        self._mysql_thread = ThreadPoolExecutor(1, thread_name_prefix="records")
        self._stopped = False
        self._purged_at = float("-inf")
        self._complaints = Every(60.0)  # once a minute while it lasts
        self._waiting: dict[str, int] = {}  # ratings whose record was not there yet → when to look again (ms)

    async def run(self) -> None:
        """Write batches until stopped; back off while MySQL (or Redis) is away."""
        delay = IDLE
        while not self._stopped:
            try:
                written = sum([await self.write_batch(bot) for bot in self.bots])
                await self._purge()
                delay = 0.0 if written else IDLE
            except (RecordsUnavailable, StoreUnavailable) as exc:
                self._complain(exc)
                delay = min(max(delay * 2, 1.0), BACKOFF_MAX)
            except Exception:  # noqa: BLE001 - a bug must not end the writer: the records would pile up
                if self._complaints.due(self.engine.clock()):
                    log.exception("record writer failed; retrying")
                delay = min(max(delay * 2, 1.0), BACKOFF_MAX)
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Stop after the batch in hand (what is not written stays in Redis for any worker)."""
        self._stopped = True

    async def write_batch(self, bot: Bot) -> int:
        """Write one batch of ``bot``'s records and ratings; how many entries are done (0: nothing to do now)."""
        assert bot.records is not None
        entries = await self.engine.redis(bot.records.take, self.engine.owner, BATCH)
        if not entries:
            return 0
        records, ratings, done = [], [], []
        for entry in entries:
            kind, data = _read(entry)
            if kind == "record":
                records.append((entry, data))
            elif kind == "feedback":
                ratings.append((entry, data))
            else:
                done.append(entry.id)  # unreadable: never retried
        skipped = await self._mysql(self.db.write, [data for _, data in records])
        done += [entry.id for entry, _ in records]
        metrics.RECORDS.labels(bot.id, "written").inc(len(records) - skipped)
        if skipped:
            metrics.RECORDS.labels(bot.id, "rejected").inc(skipped)
            log.warning("records refused by mysql", extra={"count": skipped})
        now = int(self.engine.clock() * 1000)
        for entry, data in ratings:
            if self._waiting.get(entry.id, 0) > now:
                continue  # its record was not there a moment ago: look again in a few seconds
            found = await self._mysql(self.db.rate, bot.id, str(data.get("sid", "")), data.get("rating"),
                                      str(data.get("text", "")), int(data.get("at") or now))
            if found or now - int(data.get("at") or 0) > FEEDBACK_PATIENCE_MS:
                done.append(entry.id)
                self._waiting.pop(entry.id, None)
                metrics.RECORDS.labels(bot.id, "feedback" if found else "dropped").inc()
            else:
                if len(self._waiting) > 10_000:  # ids another worker took over: forget them
                    self._waiting.clear()
                self._waiting[entry.id] = now + RATING_RETRY_MS
        await self.engine.redis(bot.records.done, done)
        metrics.RECORDS_BACKLOG.labels(bot.id).set(await self.engine.redis(bot.records.size))
        return len(done)

    async def _purge(self) -> None:
        """Once an hour, one worker of the deployment deletes the records past ``RECORDS_RETENTION_DAYS``."""
        if not self.retention_days or self.engine.clock() - self._purged_at < PURGE_EVERY or not self.bots:
            return
        self._purged_at = self.engine.clock()
        store = self.bots[0].store
        if await self.engine.redis(store.acquire_lease, store.keys.records_purge(), self.engine.owner,
                                   int(PURGE_EVERY * 1000)):
            deleted = await self._mysql(self.db.purge, self.retention_days)
            log.info("records purged", extra={"deleted": deleted, "days": self.retention_days})

    async def _mysql(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._mysql_thread, fn, *args)

    def _complain(self, exc: Exception) -> None:
        if self._complaints.due(self.engine.clock()):
            log.warning("records wait in redis", extra={"reason": str(exc)[:200]})


def _read(entry: Entry) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(entry.fields.get("data", ""))
    except ValueError:
        return "", {}
    return entry.fields.get("kind", ""), data if isinstance(data, dict) else {}

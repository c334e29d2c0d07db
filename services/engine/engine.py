"""The answer engine: one event loop per worker drives every admitted job from claim to settlement.

Request threads talk to it through ``admit``, ``answer_now``, ``stop`` and ``drain``; everything a
job does after that (authentication, waiting for its conversation's turn, streaming Dify into Redis,
settling, the follow-up) happens on the loop, which hands blocking work to two small executors:
one for Redis round trips, one for slow I/O (MySQL, the auth API, ``response_url``). No thread exists
per answer: capacity is a number of jobs (``ENGINE_CAPACITY``), not of threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from config import Settings
from services import metrics
from services.bot import Bot
from services.engine.answer import Answers
from services.engine.attach import AttachmentRefused, attach
from services.engine.background import Background
from services.engine.capacity import Capacity
from services.engine.job import Job, Outcome, State
from services.engine.keeper import LeaseKeeper, Report
from services.engine.loop import LoopThread
from services.engine.reports import Reports
from services.errors import AuthUnavailable, ModerationRefused, StoreUnavailable, UserNotAuthorized
from utils.logging import BOT

log = logging.getLogger(__name__)

T = TypeVar("T")
TICK = 0.1  # seconds between keeper passes: the bounded staleness of the Redis copy of an answer
RESPONSE_URL_LIFE = 3300.0  # seconds: a job older than this can no longer reach its user
SETTLE_AFTER_DRAIN = 10.0  # seconds the drain gives interrupted answers to settle and follow up
LOOP_JOIN = 4.0  # seconds the drain waits for the loop thread to stop
REDIS_THREADS = 8
IO_THREADS = 8
ACTIVE_LEASE_MS = 420_000  # the active-answer pointer of a job reading its media (the answer renews it)


@dataclass(frozen=True)
class Admission:
    """What became of a message handed to the engine: ``outcome`` is a metrics label."""

    outcome: str  # started | duplicate | busy | stop | empty | unsupported
    sid: str
    text: str = ""  # the final answer when the engine answered at once (stop, empty)


class Gone(Exception):
    """The job's stream was finished or removed by someone else before the job could run."""


class Interrupted(Exception):
    """The worker is shutting down before the job could run."""


class Expired(Exception):
    """The job waited longer for its conversation's turn than its user can still be reached."""


class Engine:
    """Owns the loop, the executors, the keeper and every job's life in this worker, for all its bots."""

    def __init__(self, settings: Settings, bots: Mapping[str, Bot], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.bots = settings, dict(bots)
        self.clock = clock
        self.owner = uuid.uuid4().hex  # this process's name on the stream leases it holds
        self.capacity = Capacity(settings.engine_capacity,
                                 {bot_id: bot.capacity_share for bot_id, bot in self.bots.items()})
        # a waiting job gives up while its stream can still carry the answer and its user be reached
        wait_limit = max(60.0, min(RESPONSE_URL_LIFE,
                                   settings.stream_ttl_seconds - settings.dify_total_timeout - 60))
        self.keeper = LeaseKeeper([bot.store for bot in self.bots.values()], self.owner,
                                  renew_every=settings.producer_lease_seconds / 3,
                                  wait_limit=wait_limit)
        self.answers = Answers(self)
        self.reports = Reports(self)  # records and webhook events (nothing is queued when both are off)
        self.draining = False
        self._thread = LoopThread()
        self._redis = ThreadPoolExecutor(REDIS_THREADS, thread_name_prefix="engine-redis")
        self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="engine-io")
        per_bot = max(1, IO_THREADS - (len(self.bots) - 1))
        self._io_slots = {bot_id: asyncio.Semaphore(per_bot) for bot_id in self.bots}
        # the keeper's own thread: lease renewals never queue behind the jobs' Redis calls
        self._keeper_thread = ThreadPoolExecutor(1, thread_name_prefix="engine-keeper")
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._keeping: asyncio.Task[None] | None = None
        self.background = Background(self._thread, self.start)  # services and tasks beside the answers

    # -- the interface for request threads ----------------------------------------------------------
    @property
    def admitted(self) -> int:
        """Jobs admitted and not yet settled."""
        return self.capacity.admitted

    def start(self) -> None:
        """Start the loop and the keeper (once; gunicorn's post_worker_init or the first message)."""
        if self._keeping is None:
            with self._lock:
                if self._keeping is None:
                    loop = self._thread.start()
                    loop.set_default_executor(self._io)  # aiohttp's DNS lookups: no pool of their own
                    for pool, size in ((self._redis, REDIS_THREADS), (self._io, IO_THREADS), (self._keeper_thread, 1)):
                        _spawn_all(pool, size)  # the thread count is fixed from the start, whatever the load
                    self._keeping = asyncio.run_coroutine_threadsafe(self._create_keeper(), loop).result()
                    self.background.launch_services(loop)

    def admit(self, job: Job) -> Admission:
        """Claim ``job``'s msgid and, on its first delivery, start answering it (raises StoreUnavailable)."""
        created, sid = self._claim(job, queue=True)
        if not created:
            return Admission("duplicate", sid)
        if self.draining or not self.capacity.take(job.bot.id):
            self._best_effort(job.bot.store.queue_leave, job.scope, sid)
            metrics.ENGINE_REJECTED.labels(job.bot.id).inc()
            log.warning("engine at capacity", extra={"sid": sid, "msgid": job.msgid})
            job.bot.store.set_status(sid, "failed", job.bot.settings.msg_busy)
            return Admission("busy", sid)
        self.start()
        loop = self._thread.start()
        loop.call_soon_threadsafe(self._launch, job)
        return Admission("started", sid)

    def answer_now(self, job: Job, note: str, outcome: str = "empty") -> Admission:
        """Claim ``job`` and finish its stream at once with ``note`` (e.g. an empty question)."""
        created, sid = self._claim(job, queue=False)
        if created:
            job.bot.store.set_status(sid, "done", note)
        return Admission(outcome if created else "duplicate", sid, note)

    def stop(self, job: Job) -> Admission:
        """``/stop``: finish the conversation's running answer; its owner then stops Dify's generation."""
        created, sid = self._claim(job, queue=False)
        if not created:
            return Admission("duplicate", sid)
        store, s = job.bot.store, job.bot.settings
        active = store.get_value(store.keys.active(job.scope))
        stopped = active is not None and store.set_status(active, "done", s.msg_stopped)
        ack = s.msg_stop_ack if stopped else s.msg_nothing_to_stop
        store.set_status(sid, "done", ack)
        if stopped and active is not None:
            metrics.STREAMS_ENDED.labels(job.bot.id, "stopped").inc()
            log.info("answer stopped by the user", extra={"sid": active})
            local = next((j for j in self.keeper.jobs() if j.sid == active and j.bot is job.bot), None)
            if local is not None and self._thread.loop is not None:  # ours: no need to wait for the keeper
                self._thread.loop.call_soon_threadsafe(self._cancel, local, Outcome.STOPPED)
        return Admission("stop", sid, ack)

    def begin_shutdown(self) -> None:
        """Refuse new work from now on (``/readyz`` reports it); services hand over at once."""
        self.draining = True
        if self._keeping is not None:
            self.background.stop_services_soon()

    def drain(self, budget: float) -> None:
        """Stop taking work, let running answers finish within ``budget`` s, interrupt the rest."""
        self.begin_shutdown()
        if self._thread.running:
            try:
                self._thread.submit(self._drain(budget)).result(budget + 30)
            except Exception:  # noqa: BLE001 - shutting down: say what went wrong and go on
                log.exception("drain did not complete")
            self._thread.stop(LOOP_JOIN)
        for pool in (self._redis, self._io, self._keeper_thread):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- helpers for the job's steps (used by answer.py) ---------------------------------------------
    async def redis(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one Redis round trip off the loop (in the job's logging context)."""
        return await asyncio.get_running_loop().run_in_executor(self._redis, contextvars.copy_context().run,
                                                                fn, *args)

    async def io(self, job: Job | Bot, fn: Callable[..., T], *args: Any) -> T:
        """Run slow blocking I/O (MySQL, auth API, response_url) for a job (or a bot's own work) off the loop.

        A bot holds at most ``IO_THREADS - (bots - 1)`` of the threads, so a bot whose auth API
        hangs leaves one for each other bot.
        """
        async with self._io_slots[job.id if isinstance(job, Bot) else job.bot.id]:
            return await asyncio.get_running_loop().run_in_executor(self._io, contextvars.copy_context().run,
                                                                    fn, *args)

    # -- the job's life --------------------------------------------------------------------------------
    def _claim(self, job: Job, *, queue: bool) -> tuple[bool, str]:
        meta = {"user": job.wecom_user, "chat": job.chat, "followup": "1" if job.response_url else "0"}
        created, winner, first = job.bot.store.claim(job.msgid, job.sid, self.owner, meta,
                                                  scope=job.scope if queue else None)
        # redis-py may re-run the claim after a lost reply; it then reports our own fresh sid as the
        # existing one. That is still our first delivery, not a re-delivery.
        created = created or winner == job.sid
        job.first_in_line = first
        return created, winner

    def _launch(self, job: Job) -> None:
        self.keeper.track(job)
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(job.task)

    async def _run(self, job: Job) -> None:
        BOT.set(job.bot.id)  # this task's log lines name its bot
        s = job.bot.settings
        try:
            try:
                await self.reports.received(job)
                await self._prepare(job)
                job.move(State.RUNNING)
                outcome, note = await self.answers.run(job)
            except asyncio.CancelledError:
                outcome, note = job.stop_reason or Outcome.INTERRUPTED, s.msg_interrupted
            except Gone:
                outcome, note = Outcome.ABANDONED, ""
            except Interrupted:
                outcome, note = Outcome.INTERRUPTED, s.msg_interrupted
            except Expired:
                outcome, note = Outcome.FAILED, s.msg_dify_timeout
            except UserNotAuthorized:
                outcome, note = Outcome.REFUSED, s.msg_unauthorized
            except (AttachmentRefused, ModerationRefused) as exc:
                outcome, note = Outcome.REFUSED, exc.text
            except AuthUnavailable as exc:
                log.warning("authentication unavailable", extra={"sid": job.sid, "reason": str(exc)})
                outcome, note = Outcome.FAILED, s.msg_auth_unavailable
            except StoreUnavailable:
                outcome, note = Outcome.FAILED, s.msg_busy
            except Exception:  # a job must never leave its stream open
                log.exception("answer crashed", extra={"sid": job.sid})
                outcome, note = Outcome.FAILED, s.msg_dify_failed
            job.move(State.SETTLED)
            job.outcome = outcome
            await self.answers.settle(job, outcome, note)
        except BaseException:
            log.exception("settling a job failed", extra={"sid": job.sid})
        finally:
            self.keeper.untrack(job)
            self.capacity.give_back(job.bot.id)
            if job.task is not None:
                self._tasks.discard(job.task)

    async def _prepare(self, job: Job) -> None:
        """Authenticate and wait for the conversation's turn (raises Gone if the stream ended)."""
        if job.stop_reason is not None:  # cancelled while queued (see _cancel)
            raise asyncio.CancelledError
        if self.draining:
            raise Interrupted
        store, auth = job.bot.store, job.bot.auth
        if auth is not None:
            job.move(State.AUTHENTICATING)
            if not await self.redis(store.set_status, job.sid, "authenticating"):
                raise Gone
            job.identity = await self.io(job, auth.authenticate, job.wecom_user)
        if (moderator := job.bot.moderator) is not None:  # before anything of the message reaches Dify
            verdict = await moderator.check_query(job.query, partial(self.io, job))
            job.query, job.moderation = verdict.query, verdict.label
            if verdict.refusal is not None:
                raise ModerationRefused(verdict.refusal)
        if job.attachments or job.quoted_attachments:  # now: their URLs expire 5 minutes after the message
            job.move(State.ATTACHING)  # from here the drain (or /stop's keeper report) can cancel it
            if not await self.redis(store.set_status, job.sid, "attaching"):
                raise Gone
            if job.first_in_line:  # nothing runs before it in its conversation: /stop must find it now
                await self.redis(store.put_lease, store.keys.active(job.scope), job.sid, ACTIVE_LEASE_MS)
            job.files = await attach(self, job, self.answers.token(job))
        if not job.first_in_line:
            job.move(State.WAITING)
            if not await self.redis(store.set_status, job.sid, "waiting"):
                raise Gone
            job.turn = asyncio.get_running_loop().create_future()
            if not await job.turn:
                raise Expired

    def _cancel(self, job: Job, reason: Outcome) -> None:
        if job.task is None or job.settled or job.stop_reason is not None:
            return
        job.stop_reason = reason
        if job.state is not State.QUEUED:  # a task cancelled before its first step would skip its finally
            job.task.cancel()

    def _best_effort(self, step: Callable[..., object], *args: object) -> None:
        try:
            step(*args)
        except StoreUnavailable:
            pass  # the ticket's owner lease lapses on its own

    # -- the keeper and the drain ------------------------------------------------------------------------
    async def _create_keeper(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        BOT.set("")  # started from some bot's request: its lines are the engine's, not that bot's
        loop = asyncio.get_running_loop()
        while True:
            slept = time.monotonic()
            await asyncio.sleep(TICK)
            metrics.ENGINE_LOOP_LAG.set(max(0.0, time.monotonic() - slept - TICK))
            try:
                report = await loop.run_in_executor(self._keeper_thread, self.keeper.tick, self.clock())
            except RuntimeError:  # the executor was shut down: the drain is over
                return
            self._apply(report)

    def _apply(self, report: Report) -> None:
        for job in report.turns:
            if job.turn is not None and not job.turn.done():
                job.turn.set_result(True)
        for job in report.expired:
            if job.turn is not None and not job.turn.done():
                job.turn.set_result(False)
        for job in report.finished_elsewhere:
            self._cancel(job, Outcome.STOPPED)
        for job in report.lost:
            self._cancel(job, Outcome.ABANDONED)

    async def _drain(self, budget: float) -> None:
        await self.background.stop_services()  # first: a long connection goes to a standby at once
        for job in self.keeper.jobs():
            if job.state in (State.QUEUED, State.AUTHENTICATING, State.ATTACHING, State.WAITING):
                self._cancel(job, Outcome.INTERRUPTED)
        pending = set(self._tasks) | self.background.tasks
        if pending:
            _, pending = await asyncio.wait(pending, timeout=budget)
        if pending:
            log.warning("drain budget exhausted", extra={"interrupted": len(pending)})
            self.answers.last_chance = True
            for job in self.keeper.jobs():
                self._cancel(job, Outcome.INTERRUPTED)
            await asyncio.wait(pending, timeout=SETTLE_AFTER_DRAIN)
        if self._keeping is not None:
            self._keeping.cancel()
        for bot in self.bots.values():
            await bot.dify.close()


def _spawn_all(pool: ThreadPoolExecutor, size: int) -> None:
    """Start every thread of ``pool`` now (an executor starts them one by one as work queues up)."""
    barrier = threading.Barrier(size + 1)
    for _ in range(size):
        pool.submit(barrier.wait, 5.0)
    barrier.wait(5.0)

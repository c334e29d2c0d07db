"""Background producers: one bounded, app-owned pool streams Dify answers into Redis.

Every admitted job owns its stream through a Redis lease renewed by this process's ticker thread,
which also writes buffered deltas (at most every ``FLUSH_INTERVAL``) and hands parked jobs their
conversation lane. A job waiting for its lane holds no thread. If this process dies, the leases
lapse and the next poll on any replica finishes the stream as interrupted.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from config import Settings
from services import metrics
from services.delivery import ResponseURL, follow_up
from services.dify_service import ConversationDropped, Delta, DifyClient, Finished, Replace, Started
from services.errors import (
    AuthUnavailable,
    DifyError,
    DifyHTTPError,
    DifyTimeout,
    StoreUnavailable,
    UserNotAuthorized,
)
from services.lanes import Lanes
from services.pool import WorkerPool
from services.stream_store import StreamStore
from services.stream_writer import StreamWriter
from services.user_auth import Authenticator, Identity

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1  # bounded staleness of the Redis copy; WeCom polls about once a second
RESPONSE_URL_LIFE = 3300.0  # seconds: a job older than this can no longer reach the user


@dataclass
class Job:
    """One user message to answer, and what its producer holds."""

    sid: str
    msgid: str
    query: str
    dify_user: str
    scope: str
    wecom_user: str = ""
    response_url: str = ""
    created: float = field(default_factory=time.time)
    identity: Identity | None = None
    lane_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    writer: StreamWriter | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: bool = False
    has_lane: bool = False
    degraded: bool = False  # Redis failed us during this job: polls may have ended the stream early


class Producer:
    """Owns the producer threads, their leases and the ticker; created by ``create_app``, started lazily."""

    def __init__(self, store: StreamStore, dify: DifyClient, settings: Settings, delivery: ResponseURL, *,
                 auth: Authenticator | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.store, self.dify, self.settings, self.delivery, self.auth = store, dify, settings, delivery, auth
        self.clock, self.sleep = clock, sleep
        self.token = uuid.uuid4().hex  # this process's name on the stream leases it holds
        self.pool = WorkerPool(settings.producer_threads, settings.producer_threads + settings.producer_backlog)
        self._jobs: dict[str, Job] = {}
        # the lane outlives a missed renewal or two, and renewals follow the producer lease
        self.lanes: Lanes[Job] = Lanes(store, int(max(2 * settings.producer_lease_seconds, 4) * 1000))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.draining = False
        metrics.POOL_CAPACITY.set(self.pool.capacity)

    def submit(self, job: Job) -> bool:
        """Admit ``job``; False when the pool and its backlog are full or shutting down."""
        if not self.pool.admit():
            return False
        metrics.POOL_ADMITTED.inc()
        with self._lock:
            self._jobs[job.sid] = job
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick_loop, name="producer-ticker", daemon=True)
                self._ticker.start()
        self.pool.run(lambda: self._start(job))
        return True

    def stop_dify(self, task_id: str, user: str) -> None:
        """Ask Dify, in the background, to stop generating ``task_id`` (best effort)."""
        if self.pool.admit():
            self.pool.run(lambda: self._call_stop(task_id, user))

    def begin_shutdown(self) -> None:
        """Refuse new work from now on (``/readyz`` reports it)."""
        self.draining = True
        self.pool.close()

    def drain(self, budget: float) -> None:
        """Stop taking work, let running answers finish within ``budget`` s, interrupt the rest."""
        self.begin_shutdown()
        for job in self.lanes.take_all():
            self._end(job, "interrupted", self.settings.msg_interrupted)
        if not self.pool.wait_idle(budget):
            with self._lock:
                left = list(self._jobs.values())
            log.warning("drain budget exhausted", extra={"interrupted": len(left)})
            for job in left:
                job.cancel.set()
                if self._settle(job, "interrupted", self.settings.msg_interrupted, attempts=1):
                    self._follow_up(job, self.settings.msg_interrupted)
        self._stop.set()

    # -- the job ---------------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        try:
            if self.draining:
                return self._end(job, "interrupted", self.settings.msg_interrupted)
            if self.auth is not None:
                if not self.store.set_status(job.sid, "authenticating"):
                    return self._end(job)
                job.identity = self.auth.authenticate(job.wecom_user)
            if not self.lanes.acquire(job):
                if not self.store.set_status(job.sid, "waiting"):
                    return self._end(job)
                self.lanes.park(job)  # the ticker resumes it when the lane frees
                return None
            self._answer(job)
        except UserNotAuthorized:
            self._end(job, "done", self.settings.msg_unauthorized)
        except AuthUnavailable as exc:
            log.warning("authentication unavailable", extra={"sid": job.sid, "reason": str(exc)})
            self._end(job, "failed", self.settings.msg_auth_unavailable)
        except StoreUnavailable:
            self._end(job, "failed", self.settings.msg_busy)
        except Exception:  # a producer must never leave its stream open
            log.exception("producer crashed", extra={"sid": job.sid})
            self._end(job, "failed", self.settings.msg_dify_failed)
        return None

    def _resume(self, job: Job) -> None:
        try:
            self._answer(job)
        except StoreUnavailable:
            self._end(job, "failed", self.settings.msg_busy)
        except Exception:
            log.exception("producer crashed", extra={"sid": job.sid})
            self._end(job, "failed", self.settings.msg_dify_failed)

    def _answer(self, job: Job) -> None:
        """Stream the Dify answer (the conversation lane is held)."""
        job.writer = StreamWriter(self.store, job.sid)
        if self.draining or not self.store.set_status(job.sid, "running"):
            return self._end(job, "interrupted", self.settings.msg_interrupted)
        active = self.store.keys.active(job.scope)
        self.store.put_lease(active, job.sid, int(self.settings.stream_window_seconds * 1000) + 60_000)
        conversation = self.store.get_conversation(job.scope, self.settings.conversation_idle_seconds)
        first_text = True
        try:
            for event in self._events(job, conversation):
                if job.writer.lost or job.cancel.is_set():  # finished elsewhere (/stop, interrupt): let go
                    log.info("stream no longer ours, abandoning answer", extra={"sid": job.sid})
                    return self._end(job)
                if isinstance(event, Delta):
                    if first_text:
                        first_text = False
                        metrics.FIRST_TEXT_SECONDS.observe(max(0.0, self.clock() - job.created))
                    job.writer.add(event.text)
                elif isinstance(event, Replace):
                    job.writer.replace(event.text)
                elif isinstance(event, Started):
                    conversation = event.conversation_id or conversation
                    self._best_effort(job, self.store.set_fields, job.sid,
                                      {"task_id": event.task_id, "dify_user": job.dify_user})
                elif isinstance(event, ConversationDropped):
                    self._best_effort(job, self.store.drop_conversation, job.scope)
                    conversation = None
                elif isinstance(event, Finished):
                    conversation = event.conversation_id or conversation
        except DifyError as exc:
            metrics.DIFY_ERRORS.labels(exc.code).inc()
            log.warning("dify failed", extra={"sid": job.sid, "code": exc.code})
            return self._end(job, "failed", self._dify_message(exc))
        except UserNotAuthorized:  # refused while refreshing a token the backend rejected
            return self._end(job, "done", self.settings.msg_unauthorized)
        except AuthUnavailable:
            return self._end(job, "failed", self.settings.msg_auth_unavailable)
        finally:
            self._best_effort(job, self.store.release_lease, active, job.sid)  # else it lapses on its own
        if conversation:
            self._best_effort(job, self.store.set_conversation, job.scope, conversation,
                              self.settings.conversation_idle_seconds)
        return self._end(job, "done", "")

    def _best_effort(self, job: Job, step: Callable[..., object], *args: object) -> None:
        """Run a Redis step the answer does not depend on; if Redis is away, note it and go on."""
        try:
            step(*args)
        except StoreUnavailable:
            job.degraded = True
            log.warning("redis step skipped", extra={"sid": job.sid, "step": getattr(step, "__name__", "?")})

    def _events(self, job: Job, conversation: str | None):  # type: ignore[no-untyped-def]
        """Yield Dify's events; a user token the backend rejects (401) is refreshed and retried once."""
        user_token = self.settings.dify_auth_source == "user_token"
        for attempt in (0, 1):
            identity = job.identity
            inputs = identity.dify_inputs(self.settings.inputs_from_user) if identity else {}
            token = identity.token if identity is not None and user_token else None
            try:
                yield from self.dify.chat(job.query, user=job.dify_user, conversation_id=conversation,
                                          inputs=inputs, authorization=token, cancel=job.cancel)
                return
            except DifyHTTPError as exc:
                if attempt or exc.status != 401 or token is None or self.auth is None or identity is None:
                    raise
                self.auth.invalidate(identity)
                job.identity = self.auth.authenticate(job.wecom_user)

    def _dify_message(self, exc: DifyError) -> str:
        if isinstance(exc, DifyTimeout):
            return self.settings.msg_dify_timeout
        if isinstance(exc, DifyHTTPError) and exc.status == 429:
            return self.settings.msg_dify_busy
        return self.settings.msg_dify_failed

    def _call_stop(self, task_id: str, user: str) -> None:
        try:
            self.dify.stop(task_id, user=user)
        except DifyError as exc:
            log.warning("dify stop failed", extra={"code": exc.code})
        finally:
            self.pool.release()

    # -- ending a job ----------------------------------------------------------------------------
    def _end(self, job: Job, status: str = "", note: str = "") -> None:
        """Finish the stream (if ``status``), send any follow-up, and let go of everything the job held."""
        with self._lock:
            if job.ended:
                return
            job.ended = True
        if status:
            metrics.STREAM_SECONDS.labels(status).observe(max(0.0, self.clock() - job.created))
            metrics.STREAMS_ENDED.labels("refused" if note == self.settings.msg_unauthorized else status).inc()
        try:
            if status and self._settle(job, status, note):
                self._follow_up(job, note)
        finally:
            with self._lock:
                self._jobs.pop(job.sid, None)
            try:
                self.lanes.release(job)
                self.store.release_lease(self.store.keys.stream_owner(job.sid), self.token)
            except StoreUnavailable:
                pass  # the leases lapse on their own
            self.pool.release()
            metrics.POOL_ADMITTED.dec()

    def _follow_up(self, job: Job, note: str) -> None:
        if job.response_url:
            follow_up(self.store, self.delivery, self.settings, job.sid, job.response_url, note,
                      degraded=job.degraded, text=job.writer.text if job.writer else "")

    def _settle(self, job: Job, status: str, note: str, attempts: int = 0) -> bool:
        """Flush and set the final status, retrying Redis with backoff until the job's deadline."""
        deadline = job.created + self.settings.stream_window_seconds + 30
        delay, tries = 0.1, 0
        while True:
            tries += 1
            try:
                if job.writer is not None:
                    job.writer.flush()
                self.store.set_status(job.sid, status, note)
                return True
            except StoreUnavailable:
                job.degraded = True
                if (attempts and tries >= attempts) or self.clock() + delay > deadline:
                    log.error("giving up on stream: redis unavailable", extra={"sid": job.sid})
                    return False
                self.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- the ticker ------------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        renew_every = min(self.settings.producer_lease_seconds, self.lanes.lease_ms / 1000) / 3
        last_renew = 0.0
        while not self._stop.wait(FLUSH_INTERVAL):
            metrics.POOL_BUSY.set(self.pool.busy)
            with self._lock:
                jobs = list(self._jobs.values())
            for job in jobs:
                writer = job.writer  # only running jobs have one: queued ones cost nothing here
                if writer is not None and writer.dirty:
                    try:
                        writer.flush()
                    except Exception as exc:  # noqa: BLE001 - the ticker must survive anything
                        job.degraded = True
                        log.warning("flush failed", extra={"sid": job.sid, "error": type(exc).__name__})
            try:
                self.lanes.resume(self.clock(), RESPONSE_URL_LIFE,
                                  ready=lambda j: self.pool.run(functools.partial(self._resume, j)),
                                  expired=lambda j: self.pool.run(
                                      functools.partial(self._end, j, "failed", self.settings.msg_dify_timeout)))
                if time.monotonic() - last_renew >= renew_every:
                    last_renew = time.monotonic()
                    self._renew(jobs)
            except Exception as exc:  # noqa: BLE001
                log.warning("ticker step failed", extra={"error": type(exc).__name__})

    def _renew(self, jobs: list[Job]) -> None:
        try:
            self.store.renew_owners([j.sid for j in jobs], self.token)
            self.lanes.renew(jobs)
        except StoreUnavailable:
            for job in jobs:
                job.degraded = True
            raise

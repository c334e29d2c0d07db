"""Background producers: one bounded, app-owned pool streams Dify answers into Redis.

Deltas are buffered per stream and written by one flusher thread at most every
``FLUSH_INTERVAL`` seconds, so a token-by-token answer costs a Redis write per interval, not per
token. The same thread renews the per-conversation lane leases the producers hold.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from config import Settings
from services.dify_service import (
    ConversationDropped,
    Delta,
    DifyClient,
    DifyEvent,
    Finished,
    Replace,
    Started,
)
from services.errors import AuthUnavailable, DifyError, DifyHTTPError, StoreUnavailable, UserNotAuthorized
from services.keys import LANE_LEASE_MS
from services.stream_store import StreamStore
from services.stream_writer import StreamWriter
from services.user_auth import Authenticator, Identity

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05
LANE_POLL = 0.1


@dataclass(frozen=True)
class Job:
    """One user message to answer."""

    sid: str
    msgid: str
    query: str
    dify_user: str
    scope: str
    wecom_user: str = ""
    response_url: str = ""


class Producer:
    """Owns the producer threads and the flusher; created by ``create_app``, started lazily."""

    def __init__(self, store: StreamStore, dify: DifyClient, settings: Settings, *,
                 auth: Authenticator | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.dify = dify
        self.settings = settings
        self.auth = auth
        self.idle_seconds = settings.conversation_idle_seconds
        self.sleep = sleep
        self.capacity = settings.producer_threads + settings.producer_backlog
        self._executor = ThreadPoolExecutor(max_workers=settings.producer_threads, thread_name_prefix="producer")
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._writers: dict[str, StreamWriter] = {}
        self._leases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when the pool and its backlog are full."""
        if not self._slots.acquire(blocking=False):
            return False
        self._ensure_flusher()
        self._executor.submit(self._run, job)
        return True

    def shutdown(self, wait: bool = True) -> None:
        """Stop the flusher and the pool."""
        self._stop.set()
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def _ensure_flusher(self) -> None:
        with self._lock:
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="stream-flusher", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        last_renew = 0.0
        while not self._stop.wait(FLUSH_INTERVAL):
            with self._lock:
                writers = list(self._writers.values())
                leases = list(self._leases.items())
            for writer in writers:
                try:
                    writer.flush()
                except StoreUnavailable:
                    log.warning("flush failed: redis unavailable", extra={"sid": writer.sid})
            if time.monotonic() - last_renew >= LANE_LEASE_MS / 3000:
                last_renew = time.monotonic()
                for key, token in leases:
                    try:
                        self.store.renew_lease(key, token, LANE_LEASE_MS)
                    except StoreUnavailable:
                        log.warning("lease renewal failed: redis unavailable")

    def _run(self, job: Job) -> None:
        writer = StreamWriter(self.store, job.sid)
        lane_key, token = self.store.keys.lane(job.scope), uuid.uuid4().hex
        try:
            identity = self._authenticate(job, writer)
            if identity is False or not self._enter_lane(job, lane_key, token):
                return
            with self._lock:
                self._writers[job.sid] = writer
            self._answer(job, writer, identity)
        except StoreUnavailable:
            log.error("producer lost redis", extra={"sid": job.sid})
        except Exception:  # a producer must never die silently with the stream left open
            log.exception("producer crashed", extra={"sid": job.sid})
            self._finish(job, writer, "failed", self.settings.msg_dify_failed)
        finally:
            with self._lock:
                self._writers.pop(job.sid, None)
                self._leases.pop(lane_key, None)
            try:
                self.store.release_lease(lane_key, token)
            except StoreUnavailable:
                pass
            self._slots.release()

    def _authenticate(self, job: Job, writer: StreamWriter) -> Identity | None | Literal[False]:
        """Resolve the user before anything else; False when the stream was finished instead."""
        if self.auth is None:
            return None
        if not self.store.set_status(job.sid, "authenticating"):
            return False
        try:
            return self.auth.authenticate(job.wecom_user)
        except UserNotAuthorized:
            log.info("user refused", extra={"sid": job.sid})
            self._finish(job, writer, "done", self.settings.msg_unauthorized)
        except AuthUnavailable as exc:
            log.warning("authentication unavailable", extra={"sid": job.sid, "reason": str(exc)})
            self._finish(job, writer, "failed", self.settings.msg_auth_unavailable)
        return False

    def _enter_lane(self, job: Job, lane_key: str, token: str) -> bool:
        """Wait until no other message of the same conversation is being answered."""
        waiting = False
        while not self.store.acquire_lease(lane_key, token, LANE_LEASE_MS):
            if not waiting:
                waiting = True
                if not self.store.set_status(job.sid, "waiting"):
                    return False
            self.sleep(LANE_POLL)
        with self._lock:
            self._leases[lane_key] = token
        return self.store.set_status(job.sid, "running")

    def _answer(self, job: Job, writer: StreamWriter, identity: Identity | None) -> None:
        conversation = self.store.get_conversation(job.scope, self.idle_seconds)
        user_token = self.settings.dify_auth_source == "user_token"
        try:
            try:
                events = self._chat(job, conversation, identity)
                first = next(events, None)
            except DifyHTTPError as exc:
                if not (exc.status == 401 and user_token and identity is not None and self.auth):
                    raise
                self.auth.invalidate(identity)  # the backend rejected the token: refresh it once
                identity = self.auth.authenticate(job.wecom_user)
                events = self._chat(job, conversation, identity)
                first = next(events, None)
            for event in itertools.chain([first] if first is not None else [], events):
                if writer.lost:  # the stream expired or was finished elsewhere: stop reading Dify
                    events.close()
                    log.warning("stream gone, abandoning answer", extra={"sid": job.sid})
                    return
                if isinstance(event, Delta):
                    writer.add(event.text)
                elif isinstance(event, Replace):
                    writer.replace(event.text)
                elif isinstance(event, Started) and event.conversation_id:
                    conversation = event.conversation_id
                elif isinstance(event, ConversationDropped):
                    self.store.drop_conversation(job.scope)
                    conversation = None
                elif isinstance(event, Finished) and event.conversation_id:
                    conversation = event.conversation_id
        except DifyError as exc:
            log.warning("dify failed", extra={"sid": job.sid, "code": exc.code})
            self._finish(job, writer, "failed", self.settings.msg_dify_failed)
            return
        except (UserNotAuthorized, AuthUnavailable):
            self._finish(job, writer, "failed", self.settings.msg_auth_unavailable)
            return
        if conversation:
            self.store.set_conversation(job.scope, conversation, self.idle_seconds)
        self._finish(job, writer, "done", "")

    def _chat(self, job: Job, conversation: str | None,
              identity: Identity | None) -> Generator[DifyEvent, None, None]:
        inputs = identity.dify_inputs(self.settings.inputs_from_user) if identity else {}
        token = identity.token if identity and self.settings.dify_auth_source == "user_token" else None
        return self.dify.chat(job.query, user=job.dify_user, conversation_id=conversation, inputs=inputs,
                              authorization=token)

    def _finish(self, job: Job, writer: StreamWriter, status: str, note: str) -> None:
        writer.flush()
        self.store.set_status(job.sid, status, note)
        log.info("stream finished", extra={"sid": job.sid, "msgid": job.msgid, "status": status})

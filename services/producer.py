"""Background producers: one bounded, app-owned pool streams Dify answers into Redis.

Deltas are buffered per stream and written by one flusher thread at most every
``FLUSH_INTERVAL`` seconds, so a token-by-token answer costs a Redis write per interval, not per
token. The same thread renews the per-conversation lane leases the producers hold.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services.dify_service import (
    ConversationDropped,
    Delta,
    DifyClient,
    Finished,
    Replace,
    Started,
)
from services.errors import DifyError, StoreUnavailable
from services.keys import LANE_LEASE_MS
from services.stream_store import StreamStore, WriteResult

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
    response_url: str = ""


class StreamWriter:
    """Buffers one stream's deltas and writes them with increasing sequence numbers.

    A write that failed (Redis unreachable, reply lost) is retried byte for byte under the same
    sequence number before anything newer, so a write the server did apply is recognised as a
    replay and never doubled or mixed with later text.
    """

    def __init__(self, store: StreamStore, sid: str) -> None:
        self.store = store
        self.sid = sid
        self.seq = 0
        self._pending: list[str] = []
        self._replace: str | None = None
        self._inflight: tuple[str, bool] | None = None
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.lost = False

    def add(self, text: str) -> None:
        """Queue ``text`` to be appended."""
        with self._buffer_lock:
            self._pending.append(text)

    def replace(self, text: str) -> None:
        """Queue an overwrite of the whole answer with ``text``."""
        with self._buffer_lock:
            self._replace = text
            self._pending.clear()

    def flush(self) -> None:
        """Write what is buffered; raises StoreUnavailable, keeping the write for the next flush."""
        with self._flush_lock:
            while True:
                if self._inflight is None:
                    self._inflight = self._take()
                if self._inflight is None:
                    return
                text, is_replace = self._inflight
                result = self.store.write(self.sid, self.seq + 1, text, replace=is_replace)
                self._inflight = None
                if result in (WriteResult.APPLIED, WriteResult.REPLAYED):
                    self.seq += 1
                else:
                    self.lost = True
                    log.warning("stream write refused", extra={"sid": self.sid, "result": result.name})
                    return

    def _take(self) -> tuple[str, bool] | None:
        with self._buffer_lock:
            replace, pending = self._replace, "".join(self._pending)
            self._replace, self._pending = None, []
        if replace is not None:
            return replace + pending, True
        return (pending, False) if pending else None


class Producer:
    """Owns the producer threads and the flusher; created by ``create_app``, started lazily."""

    def __init__(self, store: StreamStore, dify: DifyClient, *, threads: int, backlog: int,
                 idle_seconds: int, failed_note: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.dify = dify
        self.idle_seconds = idle_seconds
        self.failed_note = failed_note
        self.sleep = sleep
        self.capacity = threads + backlog
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="producer")
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
            if not self._enter_lane(job, lane_key, token):
                return
            with self._lock:
                self._writers[job.sid] = writer
            self._answer(job, writer)
        except StoreUnavailable:
            log.error("producer lost redis", extra={"sid": job.sid})
        except Exception:  # a producer must never die silently with the stream left open
            log.exception("producer crashed", extra={"sid": job.sid})
            self._finish(job, writer, "failed", self.failed_note)
        finally:
            with self._lock:
                self._writers.pop(job.sid, None)
                self._leases.pop(lane_key, None)
            try:
                self.store.release_lease(lane_key, token)
            except StoreUnavailable:
                pass
            self._slots.release()

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

    def _answer(self, job: Job, writer: StreamWriter) -> None:
        conversation = self.store.get_conversation(job.scope, self.idle_seconds)
        try:
            events = self.dify.chat(job.query, user=job.dify_user, conversation_id=conversation)
            for event in events:
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
            self._finish(job, writer, "failed", self.failed_note)
            return
        if conversation:
            self.store.set_conversation(job.scope, conversation, self.idle_seconds)
        self._finish(job, writer, "done", "")

    def _finish(self, job: Job, writer: StreamWriter, status: str, note: str) -> None:
        writer.flush()
        self.store.set_status(job.sid, status, note)
        log.info("stream finished", extra={"sid": job.sid, "msgid": job.msgid, "status": status})

"""Buffer one stream's deltas and write them to Redis in order, exactly once."""

from __future__ import annotations

import logging
import threading

from services.streams.records import WriteResult
from services.streams.store import StreamStore
from utils.text import clean

log = logging.getLogger(__name__)

Write = tuple[str, int, str, bool]
"""(sid, seq, text, replace): one sequence-checked write, as ``StreamStore.write_many`` takes it."""


class StreamWriter:
    """Buffers one stream's deltas and writes them with increasing sequence numbers.

    A write that failed (Redis unreachable, reply lost) is retried byte for byte under the same
    sequence number before anything newer, so a write the server did apply is recognised as a
    replay and never doubled or mixed with later text. Writes go out one at a time per stream:
    either batched with other streams' (``take_batch``/``settle_batch``) or alone (``flush``).
    """

    def __init__(self, store: StreamStore, sid: str) -> None:
        self.store = store
        self.sid = sid
        self.seq = 0
        self._pending: list[str] = []
        self._replace: str | None = None
        self._inflight: tuple[str, bool] | None = None
        self._all: list[str] = []  # the whole answer, for a follow-up when Redis lost it
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.lost = False
        self.refused: WriteResult | None = None  # why Redis refused the stream's writes, once it did
        self._progress: str | None = None  # the newest progress note not yet written

    def add(self, text: str) -> None:
        """Queue ``text`` to be appended."""
        text = clean(text)
        with self._buffer_lock:
            self._pending.append(text)
            self._all.append(text)

    def replace(self, text: str) -> None:
        """Queue an overwrite of the whole answer with ``text``."""
        text = clean(text)
        with self._buffer_lock:
            self._replace = text
            self._pending.clear()
            self._all = [text]

    def rewrite(self) -> None:
        """Queue the whole answer as one replace: Redis lost some of the writes it had taken."""
        log.warning("stream write gap: rewriting the whole answer", extra={"sid": self.sid})
        with self._buffer_lock:
            self._replace, self._pending = "".join(self._all), []

    def show_progress(self, note: str) -> None:
        """Queue ``note`` as what the stream shows of its progress (it replaces the previous one)."""
        with self._buffer_lock:
            self._progress = note

    def take_progress(self) -> str | None:
        """The progress note to write now, if it changed (``keep_progress`` puts it back after a failure)."""
        with self._buffer_lock:
            note, self._progress = self._progress, None
        return note

    def keep_progress(self, note: str) -> None:
        """Put back a progress note that could not be written, unless a newer one came meanwhile."""
        with self._buffer_lock:
            if self._progress is None:
                self._progress = note

    @property
    def dirty(self) -> bool:
        """True when something waits to be written (a cheap check without taking a lock)."""
        return not self.lost and (bool(self._pending) or self._replace is not None or self._inflight is not None
                                  or self._progress is not None)

    @property
    def text(self) -> str:
        """The whole answer received so far (whatever reached Redis)."""
        with self._buffer_lock:
            if len(self._all) > 1:
                self._all = ["".join(self._all)]
            return self._all[0] if self._all else ""

    def take_batch(self) -> tuple[Write | None, str | None] | None:
        """Claim the next write and the newest progress note together (None: nothing, or being written).

        The flush lock stays held until ``settle_batch``: a note goes out in order with the text,
        never after a newer one that ``flush`` wrote meanwhile.
        """
        if not self._flush_lock.acquire(blocking=False):
            return None
        write, note = self._next(), (self.take_progress() if not self.lost else None)
        if write is None and note is None:
            self._flush_lock.release()
            return None
        return write, note

    def settle_batch(self, result: WriteResult | None, note: str | None, note_written: bool) -> None:
        """Record how a ``take_batch`` went: the write's result, and whether its note was written."""
        try:
            if note is not None and not note_written:
                self.keep_progress(note)
            if result is not None:
                self._done(result)
        finally:
            self._flush_lock.release()

    def flush(self) -> None:
        """Write everything buffered now; raises StoreUnavailable, keeping the write for the next try."""
        with self._flush_lock:
            while (write := self._next()) is not None:
                _, seq, text, replace = write
                self._done(self.store.write(self.sid, seq, text, replace=replace))
            if (note := self.take_progress()) is not None and not self.lost:
                try:
                    self.store.set_progress(self.sid, note)
                except BaseException:
                    self.keep_progress(note)
                    raise

    def _next(self) -> Write | None:
        if self.lost:
            return None
        if self._inflight is None:
            self._inflight = self._take()
        if self._inflight is None:
            return None
        text, is_replace = self._inflight
        return self.sid, self.seq + 1, text, is_replace

    def _done(self, result: WriteResult) -> None:
        self._inflight = None
        if result in (WriteResult.APPLIED, WriteResult.REPLAYED):
            self.seq += 1
        elif result is WriteResult.GAP:  # Redis lost writes it had taken (a failover): send the whole text
            self.rewrite()
        else:
            self.lost, self.refused = True, result
            log.warning("stream write refused", extra={"sid": self.sid, "result": result.name})

    def _take(self) -> tuple[str, bool] | None:
        with self._buffer_lock:
            replace, pending = self._replace, "".join(self._pending)
            self._replace, self._pending = None, []
        if replace is not None:
            return replace + pending, True
        return (pending, False) if pending else None

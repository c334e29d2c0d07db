"""The lease keeper: the engine's periodic Redis work, batched into a few round trips per tick.

Each tick it writes every running answer's buffered deltas (one pipeline), asks the ticket queues
whether waiting answers may run (two pipelines), records the "busy" frames this worker's polls
answered while Redis was away (one pipeline, only when there are some), and every third of the
owner lease renews every lease this worker holds (one script call per 500), learning which streams
were finished elsewhere (``/stop``) or taken from it. It only reports; the engine acts on the report. Time is injected:
``tick(now)`` is all a test needs to drive it. With several bots, each step runs once per bot's store
(their keys differ, their Redis is the same), so a tick costs a few round trips per bot with work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from services import metrics
from services.engine.job import Job, State
from services.errors import StoreUnavailable
from services.streams.records import Lease, Turn, WriteResult
from services.streams.store import StreamStore
from services.streams.writer import StreamWriter, Write
from utils.logging import Every

log = logging.getLogger(__name__)

TRACEBACK_EVERY = 10.0  # seconds between two full tracebacks of unexpected tick errors


@dataclass
class Report:
    """What one tick found, for the engine to act on."""

    turns: list[Job] = field(default_factory=list)  # waiting jobs whose turn has come
    expired: list[Job] = field(default_factory=list)  # waited too long for their turn
    finished_elsewhere: list[Job] = field(default_factory=list)  # e.g. stopped by /stop
    lost: list[Job] = field(default_factory=list)  # the stream is no longer theirs to write


class LeaseKeeper:
    """Flush, renew and hand out turns for the jobs of one worker."""

    def __init__(self, stores: Sequence[StreamStore], owner: str, *, renew_every: float, wait_limit: float) -> None:
        self.stores = list(stores)
        self.owner = owner
        self.renew_every = renew_every
        self.wait_limit = wait_limit  # seconds a job may wait for its turn (its stream must outlive it)
        self._jobs: dict[tuple[str, str], Job] = {}  # by bot and stream
        self._lock = threading.Lock()
        self._last_renew = float("-inf")
        self._tracebacks = Every(TRACEBACK_EVERY)

    def track(self, job: Job) -> None:
        """Keep ``job``'s owner lease alive (and its writes flowing) until ``untrack``."""
        with self._lock:
            self._jobs[(job.bot.id, job.sid)] = job

    def untrack(self, job: Job) -> None:
        """Stop looking after ``job``."""
        with self._lock:
            self._jobs.pop((job.bot.id, job.sid), None)

    def jobs(self) -> list[Job]:
        """Every tracked job."""
        with self._lock:
            return list(self._jobs.values())

    def tick(self, now: float) -> Report:
        """Do one pass; never raises (an unexpected error is logged with its traceback and counted)."""
        report = Report()
        jobs = self.jobs()
        for step in (self._flush, self._turns, self._renew, self._busy):
            try:
                step(jobs, now, report)
            except StoreUnavailable:
                for job in jobs:
                    job.degraded = True
            except Exception:  # the keeper must survive anything, but never hide it
                metrics.KEEPER_ERRORS.inc()
                if self._tracebacks.due(now):
                    log.exception("lease keeper step failed", extra={"step": step.__name__})
        return report

    def _flush(self, jobs: list[Job], now: float, report: Report) -> None:
        for store, group in _by_store(jobs):
            self._flush_store(store, group, report)

    def _flush_store(self, store: StreamStore, jobs: list[Job], report: Report) -> None:
        taken: list[tuple[Job, StreamWriter, Write | None, str | None]] = []
        for job in jobs:
            writer = job.writer
            if writer is not None and writer.dirty and (batch := writer.take_batch()) is not None:
                taken.append((job, writer, *batch))
        if not taken:
            return
        writes = [write for _, _, write, _ in taken if write is not None]
        notes = [(writer.sid, note) for _, writer, _, note in taken if note is not None]
        try:
            replies = store.write_many(writes, notes)
        except BaseException:
            for _, writer, _, note in taken:
                writer.settle_batch(None, note, False)  # sent again on the next tick
            raise
        results, written = iter(replies[: len(writes)]), iter(replies[len(writes):])
        for job, writer, write, note in taken:
            result = next(results) if write is not None else None
            writer.settle_batch(result, note, note is None or next(written) is not None)
            if writer.refused is WriteResult.FINISHED:  # e.g. /stop on another replica
                report.finished_elsewhere.append(job)
            elif writer.lost:
                report.lost.append(job)

    def _turns(self, jobs: list[Job], now: float, report: Report) -> None:
        waiting = [j for j in jobs if j.state is State.WAITING and j.turn is not None and not j.turn.done()]
        if not waiting:
            return
        ask: list[Job] = []
        for job in waiting:
            if now - job.created > self.wait_limit:
                report.expired.append(job)
            else:
                ask.append(job)
        for store, group in _by_store(ask):
            heads = store.queue_heads([job.scope for job in group])
            behind = [(job, head) for job, head in zip(group, heads, strict=True) if head != job.sid]
            report.turns += [job for job, head in zip(group, heads, strict=True) if head == job.sid]
            turns = store.queue_turns([(job.scope, job.sid, head) for job, head in behind])
            report.turns += [job for (job, _), turn in zip(behind, turns, strict=True) if turn is Turn.MINE]

    def _busy(self, jobs: list[Job], now: float, report: Report) -> None:
        for store in self.stores:
            store.record_busy_shown()  # "busy" polls this worker answered while Redis was away

    def _renew(self, jobs: list[Job], now: float, report: Report) -> None:
        if now - self._last_renew < self.renew_every and now >= self._last_renew:
            return
        metrics.ENGINE_JOBS_TRACKED.set(len(jobs))
        if not jobs:
            self._last_renew = now
            return
        found: list[tuple[Job, Lease]] = []
        for store, group in _by_store(jobs):  # on failure: again next tick
            found += zip(group, store.renew_owners([j.sid for j in group], self.owner), strict=True)
        self._last_renew = now
        for job, lease in found:
            if lease is Lease.FINISHED and job.state in (State.RUNNING, State.WAITING, State.AUTHENTICATING,
                                                         State.ATTACHING):
                report.finished_elsewhere.append(job)
            elif lease is Lease.LOST and not job.settled:
                report.lost.append(job)


def _by_store(jobs: list[Job]) -> list[tuple[StreamStore, list[Job]]]:
    """``jobs`` grouped by their bot's store, in first-seen order."""
    groups: dict[int, tuple[StreamStore, list[Job]]] = {}
    for job in jobs:
        groups.setdefault(id(job.bot.store), (job.bot.store, []))[1].append(job)
    return list(groups.values())

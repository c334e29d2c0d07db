"""Per-conversation lanes: one answer at a time per conversation, across replicas.

A job whose conversation is busy is parked here (holding no thread) and handed back when a ticker
pass acquires its lane. Lanes are Redis leases renewed while their answer runs, so a crashed
replica's lane lapses on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from services.errors import StoreUnavailable
from services.stream_store import StreamStore

log = logging.getLogger(__name__)


class Laned(Protocol):
    """What a lane needs to know about a job."""

    sid: str
    scope: str
    lane_token: str
    created: float
    has_lane: bool


J = TypeVar("J", bound=Laned)


class Lanes(Generic[J]):
    """Acquire, park, resume and renew conversation lanes."""

    def __init__(self, store: StreamStore, lease_ms: int) -> None:
        self.store = store
        self.lease_ms = lease_ms
        self._parked: list[J] = []
        self._lock = threading.Lock()

    def claim_args(self, job: J) -> tuple[str, str, int]:
        """(key, token, lease) for taking the lane in the same script that claims the message."""
        return self.store.keys.lane(job.scope), job.lane_token, self.lease_ms

    def acquire(self, job: J) -> bool:
        """Take the job's lane now if it is free (or say so if the claim already took it)."""
        if not job.has_lane:
            job.has_lane = self.store.acquire_lease(self.store.keys.lane(job.scope), job.lane_token, self.lease_ms)
        return job.has_lane

    def park(self, job: J) -> None:
        """Keep ``job`` until its lane frees."""
        with self._lock:
            self._parked.append(job)

    def take_all(self) -> list[J]:
        """Remove and return every parked job (for the drain)."""
        with self._lock:
            parked, self._parked = self._parked, []
        return parked

    def resume(self, now: float, max_age: float, ready: Callable[[J], None],
               expired: Callable[[J], None]) -> None:
        """Hand parked jobs whose lane is free to ``ready``, too-old ones to ``expired``; keep the rest."""
        keep: list[J] = []
        for job in self.take_all():
            try:
                if now - job.created > max_age:
                    expired(job)
                elif self.acquire(job):
                    ready(job)
                else:
                    keep.append(job)
            except StoreUnavailable:
                keep.append(job)  # Redis will be back: try again on the next pass
        with self._lock:
            self._parked = keep + self._parked

    def renew(self, jobs: list[J]) -> None:
        """Extend the lanes the jobs hold."""
        for job in jobs:
            if job.has_lane:
                self.store.renew_lease(self.store.keys.lane(job.scope), job.lane_token, self.lease_ms)

    def release(self, job: J) -> None:
        """Let the next message of the conversation run."""
        self.store.release_lease(self.store.keys.lane(job.scope), job.lane_token)

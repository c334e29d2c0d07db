"""How many answers a worker's engine holds, shared fairly among its bots.

Each bot keeps ``capacity_share`` of the capacity for itself alone (at least one slot, so no bot
can be configured into refusing everything); the rest goes to whichever bot asks first. A bot past
its own part may take a slot only while no other bot's unused part would be eaten, so a flood on
one bot can fill the shared rest but never another bot's reserve.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

from services import metrics


class Capacity:
    """Slots for admitted answers: ``take(bot)`` before a job starts, ``give_back(bot)`` when it settles."""

    def __init__(self, total: int, shares: Mapping[str, float]) -> None:
        self.total = total
        self.reserved = reserves(total, shares)
        self._held = dict.fromkeys(shares, 0)
        self._lock = threading.Lock()
        metrics.ENGINE_CAPACITY.set(total)
        for bot, slots in self.reserved.items():
            metrics.ENGINE_RESERVED.labels(bot).set(slots)

    @property
    def admitted(self) -> int:
        """Slots in use, all bots together."""
        with self._lock:
            return sum(self._held.values())

    def held(self, bot: str) -> int:
        """Slots ``bot`` is using."""
        with self._lock:
            return self._held[bot]

    def take(self, bot: str) -> bool:
        """A slot for one answer of ``bot``: one of its own, else a shared one; False when there is none."""
        with self._lock:
            if self._held[bot] >= self.reserved[bot]:
                in_use = sum(max(n, self.reserved[b]) for b, n in self._held.items())
                if in_use >= self.total:
                    return False
            self._held[bot] += 1
        metrics.ENGINE_JOBS.labels(bot).inc()
        return True

    def give_back(self, bot: str) -> None:
        """Return the slot of an answer of ``bot`` that settled."""
        with self._lock:
            self._held[bot] -= 1
        metrics.ENGINE_JOBS.labels(bot).dec()


def reserves(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Slots each bot keeps: its share of ``total`` rounded down, but at least one.

    A bot's minimum slot is taken from the largest reserve, so the reserves never add up to more
    than ``total`` (the configuration guarantees at least one slot per bot).
    """
    kept = {bot: math.floor(total * share + 1e-9) for bot, share in shares.items()}
    for bot in [b for b, n in kept.items() if n == 0]:
        if sum(kept.values()) >= total:
            largest = max(kept, key=lambda b: kept[b])
            kept[largest] -= 1
        kept[bot] = 1
    return kept

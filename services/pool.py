"""A bounded pool of daemon threads for producers.

Unlike ``ThreadPoolExecutor`` its threads are daemons, so a worker process that is shutting down
never waits for a Dify stream at interpreter exit (gunicorn would otherwise stall or SIGKILL it);
streams left behind are finished by the drain or, after a crash, by their lapsed owner lease.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Task = Callable[[], Any]


class WorkerPool:
    """Run tasks on up to ``threads`` daemon threads, with at most ``capacity`` admitted at once."""

    def __init__(self, threads: int, capacity: int, name: str = "producer") -> None:
        self.threads = threads
        self.capacity = capacity
        self.name = name
        self._queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0
        self._idle = threading.Condition(self._lock)
        self._started = 0
        self._busy = 0
        self.closed = False

    @property
    def admitted(self) -> int:
        """Tasks admitted and not yet released (running, queued or parked)."""
        return self._admitted

    @property
    def busy(self) -> int:
        """Threads running a task right now."""
        return self._busy

    def admit(self) -> bool:
        """Reserve room for one more task; False when full or closed."""
        with self._lock:
            if self.closed or self._admitted >= self.capacity:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        """Give back the room of a task that has ended."""
        with self._lock:
            self._admitted -= 1
            self._idle.notify_all()

    def run(self, task: Task) -> None:
        """Queue an admitted task for a thread."""
        with self._lock:
            if self._started < self.threads and self._busy + self._queue.qsize() >= self._started:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()
        self._queue.put(task)

    def close(self) -> None:
        """Admit nothing more."""
        with self._lock:
            self.closed = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every admitted task has been released; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._admitted > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            with self._lock:
                self._busy += 1
            try:
                task()
            except Exception:  # the task owns its error handling; never lose the thread
                log.exception("producer task crashed")
            finally:
                with self._lock:
                    self._busy -= 1

"""What an answer shows of its progress while it is prepared (``PROGRESS``: ``off``, ``steps`` or ``think``).

``steps`` shows one short line naming the current step (a tool, a workflow node, thinking); ``think``
shows the steps and a reasoning model's thoughts in a ``<think>`` block, which WeCom's client renders
as a thinking section. The note lives beside the answer (meta ``progress``), never in it: a poll puts
it above the text only with the room the answer leaves (wecom-protocol.md §2.2), and when the answer
is done the step lines go; in ``think`` mode the reasoning stays in its block.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.dify import Progress

MAX_NOTE = 6000
"""Characters of progress kept (the latest): what a poll may show above the answer."""
REASONING_EVERY = 1.0
"""Seconds between two notes while only reasoning changes (each note is rewritten whole into Redis)."""


class ProgressView:
    """One answer's progress note, as its events come."""

    def __init__(self, mode: str, *, tool: str, node: str, thinking: str,
                 clock: Callable[[], float] = time.monotonic, every: float = REASONING_EVERY) -> None:
        self.mode = mode
        self.clock, self.every = clock, every
        self._shown_at = float("-inf")
        self._unshown = False  # reasoning arrived that no note has shown yet
        self.templates = {"tool": tool, "node": node}
        self.thinking = thinking
        self._parts: list[str] = []  # think mode: step lines and reasoning, in order
        self._reasoning: list[str] = []
        self._size = 0

    def add(self, event: Progress) -> str | None:
        """The note to show after ``event`` (None: unchanged, or progress is off)."""
        if self.mode == "off" or not event.text:
            return None
        if event.kind == "reasoning":
            self._reasoning.append(event.text)
            if self.mode == "steps":
                return self.thinking if len(self._reasoning) == 1 else None
            self._parts.append(event.text)
        else:
            line = self.templates.get(event.kind, "{name}").replace("{name}", event.text)
            if self.mode == "steps":
                return line
            self._parts.append(f"\n▸ {line}\n")
        self._size += len(self._parts[-1])
        if self._size > 2 * MAX_NOTE:  # keep memory bounded: only the tail is ever shown
            self._parts = ["".join(self._parts)[-MAX_NOTE:]]
            self._size = len(self._parts[0])
        if event.kind == "reasoning" and self.clock() - self._shown_at < self.every:
            self._unshown = True  # thoughts stream by the token: the note is rewritten at most once a second
            return None
        return self._note()

    def pending(self) -> str | None:
        """The note with the reasoning not shown yet (e.g. when the answer's text begins), else None."""
        return self._note() if self._unshown else None

    def _note(self) -> str:
        self._shown_at, self._unshown = self.clock(), False
        return "".join(self._parts)[-MAX_NOTE:].strip()

    def final(self) -> str:
        """The note the finished answer keeps: its reasoning in ``think`` mode, else nothing."""
        return "".join(self._reasoning)[-MAX_NOTE:].strip() if self.mode == "think" else ""

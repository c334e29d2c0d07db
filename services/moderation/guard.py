"""An answer let through only as far as it has been checked; the unchecked tail is held back.

A shown prefix is never taken back: text reaches the stream only once checked. With a word list the
last few characters wait for the text that may complete a word; with a moderation service each
sentence (or each ``SEGMENT`` characters without one) is checked before it is let through.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from services.moderation.words import WordList

SEGMENT = 200
"""Characters of an answer let wait for a sentence end before they are checked anyway."""
SENTENCE_END = re.compile(r"[。！？!?\n]")

Check = Callable[[str], Awaitable[str]]
"""Asks the moderation service about a part of the answer; returns what to show of it."""


class AnswerGuard:
    """One answer's moderation: ``feed`` each delta, ``end`` once; each returns the text to show now."""

    def __init__(self, words: WordList | None, check: Check | None, replacement: str) -> None:
        self.words, self.check, self.replacement = words, check, replacement
        self.pending = ""
        self.replaced = 0  # blocked words and flagged parts replaced so far

    async def feed(self, text: str) -> str:
        """Take a delta; return the checked text that may be shown now."""
        self.pending += text
        return await self._release(final=False)

    async def restart(self, text: str) -> str:
        """Dify replaced the whole answer with ``text``: check it afresh; return what may be shown now."""
        self.pending = text
        return await self._release(final=False)

    async def end(self) -> str:
        """The answer is complete: check and return everything still held."""
        return await self._release(final=True)

    async def _release(self, *, final: bool) -> str:
        cut = len(self.pending)
        if not final and self.words is not None:
            cut = self.words.safe_cut(self.pending)
        if not final and self.check is not None:
            ends = [m.end() for m in SENTENCE_END.finditer(self.pending, 0, cut)]
            cut = ends[-1] if ends else (cut if cut >= SEGMENT else 0)
        part, self.pending = self.pending[:cut], self.pending[cut:]
        if not part:
            return ""
        if self.words is not None:
            part, count = self.words.redact(part, self.replacement)
            self.replaced += count
        if self.check is not None:
            checked = await self.check(part)
            self.replaced += checked != part
            part = checked
        return part

"""A list of blocked words, matched case-insensitively anywhere in a text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from config.settings import MAX_BLOCKED_WORDS as MAX_WORDS


class WordList:
    """Blocked words (longest first, so the longest match at a place wins)."""

    def __init__(self, words: Iterable[str]) -> None:
        unique = sorted({w.strip() for w in words if w.strip()}, key=lambda w: (-len(w), w))
        if len(unique) > MAX_WORDS:
            raise ValueError(f"more than {MAX_WORDS} blocked words")
        self.words = unique
        self.longest = len(unique[0]) if unique else 0
        self._pattern = re.compile("|".join(map(re.escape, unique)), re.IGNORECASE) if unique else None

    @classmethod
    def from_file(cls, path: str | Path) -> WordList:
        """Read one word per line (UTF-8); blank lines and lines starting with ``#`` are skipped."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(line for line in lines if not line.lstrip().startswith("#"))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where blocked words are in ``text`` (non-overlapping, left to right)."""
        return [m.span() for m in self._pattern.finditer(text)] if self._pattern else []

    def blocked(self, text: str) -> bool:
        """True when ``text`` contains a blocked word."""
        return bool(self._pattern and self._pattern.search(text))

    def redact(self, text: str, replacement: str) -> tuple[str, int]:
        """``text`` with every blocked word replaced; and how many were."""
        if not self._pattern:
            return text, 0
        return self._pattern.subn(lambda _m: replacement, text)

    def safe_cut(self, text: str) -> int:
        """How much of ``text`` can be let through now: no blocked word can start there and end later.

        The last ``longest - 1`` characters may begin a word the next text completes, and a word
        found across that point is held whole.
        """
        cut = max(0, len(text) - max(0, self.longest - 1))
        for start, end in self.spans(text):
            if start < cut < end:
                return start
        return cut

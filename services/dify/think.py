"""A reasoning model's ``<think>`` block, taken out of the answer text as it streams (split across deltas)."""

from __future__ import annotations


class ThinkSplitter:
    """Take a reasoning model's leading ``<think>…</think>`` block out of the answer text, across deltas.

    Only a block that opens the answer counts (a ``<think>`` later in the text is the answer's own).
    """

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.inside = False
        self.done = False  # the answer has begun: no block any more
        self._held = ""  # the start of a tag, or leading whitespace, not yet decided on
        self._closed = False  # the block just closed: the blank lines after it are not the answer's

    def feed(self, text: str, *, end: bool = False) -> tuple[str, str]:
        """(answer, reasoning) of ``text``; with ``end`` whatever was held back is released as answer."""
        buf, self._held = self._held + text, ""
        if self._closed:
            buf = buf.lstrip()
            self._closed = not buf
        if self.done:
            return buf, ""
        answer, reasoning = "", ""
        while buf:
            if not self.inside:
                stripped = buf.lstrip()
                if stripped.startswith(self.OPEN):
                    self.inside, buf = True, stripped[len(self.OPEN):]
                    continue
                if self.OPEN.startswith(stripped) and not end:  # maybe the tag, split across deltas
                    self._held = buf
                    return answer, reasoning
                self.done = True
                return answer + buf, reasoning
            i = buf.find(self.CLOSE)
            if i >= 0:
                reasoning += buf[:i]
                rest = buf[i + len(self.CLOSE):].lstrip()
                self.inside, self.done, self._closed = False, True, not rest
                return answer + rest, reasoning
            keep = next((n for n in range(len(self.CLOSE) - 1, 0, -1) if buf.endswith(self.CLOSE[:n])), 0)
            keep = 0 if end else keep
            reasoning += buf[: len(buf) - keep]
            self._held = buf[len(buf) - keep:]
            return answer, reasoning
        return answer, reasoning

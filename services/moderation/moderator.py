"""A bot's moderation: its word list and/or service, the fail-open/closed rule, and the decisions' count."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from services import metrics
from services.moderation.guard import AnswerGuard
from services.moderation.remote import ModerationUnavailable, RemoteModeration, Verdict
from services.moderation.words import WordList

log = logging.getLogger(__name__)
T = TypeVar("T")
Offload = Callable[[Callable[..., T], str, str], Awaitable[T]]
"""Runs a blocking call off the event loop (the engine's IO executor)."""


@dataclass(frozen=True)
class QueryVerdict:
    """What to do with a question: ``refusal`` (not asked) or the ``query`` to ask; the decision's name."""

    query: str
    refusal: str | None
    decision: str

    @property
    def label(self) -> str:
        """The decision as a record shows it: "" when the question passed, else ``query_<decision>``."""
        return "" if self.decision == "passed" else f"query_{self.decision}"


class Moderator:
    """Checks one bot's questions and answers; ``fail_closed`` refuses what cannot be checked."""

    def __init__(self, bot_id: str, words: WordList | None, remote: RemoteModeration | None, *,
                 fail_closed: bool, answers: bool, refusal: str, replacement: str) -> None:
        self.bot_id, self.words, self.remote = bot_id, words, remote
        self.fail_closed, self.answers = fail_closed, answers
        self.refusal, self.replacement = refusal, replacement

    async def check_query(self, query: str, offload: Offload[Verdict]) -> QueryVerdict:
        """Decide on a question before Dify sees it."""
        if self.words is not None and self.words.blocked(query):
            return self._count("query", QueryVerdict(query, self.refusal, "blocked"))
        if self.remote is not None:
            try:
                verdict = await offload(self.remote.check_query, self.bot_id, query)
            except ModerationUnavailable as exc:
                log.warning("moderation unavailable for a question", extra={"reason": str(exc)[:100]})
                if self.fail_closed:
                    return self._count("query", QueryVerdict(query, self.refusal, "error_closed"))
                return self._count("query", QueryVerdict(query, None, "error_open"))
            if verdict.flagged and verdict.overridden and verdict.instead:
                return self._count("query", QueryVerdict(verdict.instead, None, "overridden"))
            if verdict.flagged:
                return self._count("query", QueryVerdict(query, verdict.instead or self.refusal, "blocked"))
        return self._count("query", QueryVerdict(query, None, "passed"))

    def guard(self, offload: Offload[Verdict]) -> AnswerGuard | None:
        """A guard for one answer (None when answers are not checked)."""
        if not self.answers:
            return None

        async def check(text: str) -> str:
            assert self.remote is not None
            try:
                verdict = await offload(self.remote.check_text, self.bot_id, text)
            except ModerationUnavailable as exc:
                log.warning("moderation unavailable for an answer", extra={"reason": str(exc)[:100]})
                metrics.MODERATION.labels(self.bot_id, "answer", "error_closed" if self.fail_closed
                                          else "error_open").inc()
                return self.replacement if self.fail_closed else text
            metrics.MODERATION.labels(self.bot_id, "answer", "replaced" if verdict.flagged else "passed").inc()
            return (verdict.instead if verdict.instead is not None else self.replacement) if verdict.flagged else text

        return AnswerGuard(self.words, check if self.remote is not None else None, self.replacement)

    def redact(self, text: str) -> str:
        """Text beside an answer (its files' links): blocked words replaced when answers are checked."""
        if not self.answers or self.words is None:
            return text
        return self.words.redact(text, self.replacement)[0]

    def allows(self, text: str) -> bool:
        """False for a suggested question (or form) with a blocked word, when answers are checked; with a
        service checking answers, always False: such extras are not sent to it, so they are not shown."""
        if not self.answers:
            return True
        return self.remote is None and not (self.words is not None and self.words.blocked(text))

    def _count(self, point: str, verdict: QueryVerdict) -> QueryVerdict:
        metrics.MODERATION.labels(self.bot_id, point, verdict.decision).inc()
        return verdict

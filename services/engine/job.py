"""One user message to answer: its data and the states its life moves through.

    queued ─► authenticating ─► attaching (media) ─► waiting (for its turn) ─► running ─► settled
       └──────────┴─────────────────┴─────────────────────┴────────────────────────┘ (any state may settle)

Only the engine moves a job (``Job.move``); everything else reads it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from services.bot import Bot
from services.streams.writer import StreamWriter
from services.user_auth import Identity


class State(enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    AUTHENTICATING = "authenticating"
    ATTACHING = "attaching"  # downloading the message's media and uploading them to Dify
    WAITING = "waiting"
    RUNNING = "running"
    SETTLED = "settled"


NEXT: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.AUTHENTICATING, State.ATTACHING, State.WAITING, State.RUNNING, State.SETTLED}),
    State.AUTHENTICATING: frozenset({State.ATTACHING, State.WAITING, State.RUNNING, State.SETTLED}),
    State.ATTACHING: frozenset({State.WAITING, State.RUNNING, State.SETTLED}),
    State.WAITING: frozenset({State.RUNNING, State.SETTLED}),
    State.RUNNING: frozenset({State.SETTLED}),
    State.SETTLED: frozenset(),
}


class Outcome(enum.Enum):
    """How a settled job ended (the stream's final status follows from it)."""

    FINISHED = "done"
    REFUSED = "refused"  # the user may not use the bot: a final answer, status done
    FAILED = "failed"
    STOPPED = "stopped"  # /stop: the stream was finished by the stop, the job let go
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"  # the stream was ended or lost elsewhere: nothing left to write


class IllegalTransition(RuntimeError):
    """A job was moved along an edge its life does not have (a programming error)."""


@dataclass
class Job:
    """One user message to answer, and what the engine holds for it."""

    sid: str
    bot: Bot  # whose message it is: its store, its Dify app, its texts
    msgid: str
    query: str
    dify_user: str
    scope: str
    wecom_user: str = ""
    chat: str = ""
    response_url: str = ""
    attachments: tuple[tuple[str, str], ...] = ()  # (msgtype, URL) of media for Dify (URLs expire in 5 minutes)
    quoted_attachments: tuple[tuple[str, str], ...] = ()  # the quote's media: best effort
    media_keys: dict[str, str] = field(default_factory=dict)  # URL -> its own aeskey (long connection)
    files: list[dict[str, str]] = field(default_factory=list)  # the uploaded files, for Dify's chat
    reset: bool = False  # /new: in its turn, end the conversation instead of asking Dify
    polled: bool = True  # False: nobody polls its stream (a card click): the answer goes whole via response_url
    message_id: str = ""  # Dify's, once its first frame arrived
    resume: dict[str, Any] | None = None  # a form's choice (token, run_id, values, action): resume that run
    follow_card: dict[str, Any] | None = None  # an unpolled answer paused at a form: its card goes instead
    image_links: str = ""  # the answer's images (shown in its last frame) as links, for a follow-up
    created: float = field(default_factory=time.time)
    state: State = State.QUEUED
    outcome: Outcome | None = None
    first_in_line: bool = False  # the claim found it at the head of its conversation's queue
    identity: Identity | None = None
    writer: StreamWriter | None = None
    task_id: str = ""  # Dify's, for stopping the generation
    degraded: bool = False  # Redis failed us during this job: polls may have ended the stream early
    stop_reason: Outcome | None = None  # why the engine cancelled the job's task
    task: asyncio.Task[None] | None = None
    turn: asyncio.Future[bool] | None = None  # resolved by the keeper when the job may run
    # what its record and webhook event tell (services/engine/reports.py)
    conversation_id: str = ""  # Dify's
    usage: dict[str, Any] = field(default_factory=dict)  # message_end's metadata.usage
    first_text_at: float = 0.0  # clock() of the answer's first text
    moderation: str = ""  # what the moderation decided: "", "query_blocked", "answer_filtered", "unchecked"

    def move(self, to: State) -> None:
        """Advance to ``to``; raises IllegalTransition for an edge the life does not have."""
        if to not in NEXT[self.state]:
            raise IllegalTransition(f"{self.sid}: {self.state.value} -> {to.value}")
        self.state = to

    @property
    def settled(self) -> bool:
        """True once the job's life is over."""
        return self.state is State.SETTLED

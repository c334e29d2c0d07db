"""What a running job does: stream its Dify answer into Redis, then settle it and follow up once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING

from config import Settings
from services import metrics
from services.delivery import join, send_rest
from services.dify import (
    AnswerFile,
    ConversationDropped,
    Delta,
    DifyEvent,
    Finished,
    FormRequired,
    Paused,
    Progress,
    Replace,
    Started,
    error_label,
)
from services.engine.extras import Extras
from services.engine.job import Job, Outcome
from services.engine.progress import ProgressView
from services.errors import AuthUnavailable, DifyError, DifyHTTPError, DifyTimeout, StoreUnavailable, UserNotAuthorized
from services.streams.records import WriteResult
from services.streams.writer import StreamWriter

if TYPE_CHECKING:
    from services.engine.engine import Engine

log = logging.getLogger(__name__)

STATUS = {Outcome.FINISHED: "done", Outcome.REFUSED: "done", Outcome.FAILED: "failed",
          Outcome.INTERRUPTED: "interrupted"}
"""The final stream status each outcome writes; stopped and abandoned streams were ended elsewhere."""

SEEN_GRACE = 4.0
"""Seconds to wait, after Redis trouble, for a poll to show an answer's last frame. WeCom polls about
once a second until the last frame, so a stream no poll showed by then was ended for the user
(e.g. a "busy" frame while Redis was away) and gets the whole answer through ``response_url``."""


class Answers:
    """Run and settle jobs for an engine (which owns their life; this is the work inside it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.last_chance = False  # the drain ran out of time: one Redis attempt each, no waiting
        self.extras = Extras(self)

    async def run(self, job: Job) -> tuple[Outcome, str]:
        """Stream the Dify answer (the job has its conversation's turn); return how it ended."""
        e, s, store = self.engine, job.bot.settings, job.bot.store
        job.writer = StreamWriter(store, job.sid)
        if e.draining:
            return Outcome.INTERRUPTED, s.msg_interrupted
        if not await e.redis(store.set_status, job.sid, "running"):
            return Outcome.ABANDONED, ""
        if job.reset:  # its turn: every answer before it has ended (or was stopped); later ones start afresh
            await e.redis(store.drop_conversation, job.scope)
            return Outcome.FINISHED, s.msg_new_ack
        active = store.keys.active(job.scope)
        await e.redis(store.put_lease, active, job.sid, int(s.stream_window_seconds * 1000) + 60_000)
        conversation = await e.redis(store.get_conversation, job.scope)
        first_text = True
        note = ""
        files: list[AnswerFile] = []
        forms: list[FormRequired] = []
        paused = False
        uploaded = {f.get("upload_file_id") for f in job.files}
        guard = job.bot.moderator.guard(partial(e.io, job)) if job.bot.moderator is not None else None
        # a reasoning model's thoughts are model output too: with checked answers only the steps show
        mode = "steps" if guard is not None and s.progress == "think" else s.progress
        progress = ProgressView(mode, tool=s.msg_progress_tool, node=s.msg_progress_node,
                                thinking=s.msg_progress_thinking)
        try:
            async with aclosing(self._events(job, conversation)) as events:  # a cancel closes the response
                async for event in events:
                    if isinstance(event, Delta):
                        if first_text:
                            first_text, job.first_text_at = False, e.clock()
                            if (shown := progress.pending()) is not None:
                                job.writer.show_progress(shown)  # the last thoughts before the answer
                            metrics.FIRST_TEXT_SECONDS.labels(job.bot.id).observe(max(0.0, e.clock() - job.created))
                        # the keeper writes it within one tick; with moderation, only what has been checked
                        job.writer.add(await guard.feed(event.text) if guard is not None else event.text)
                    elif isinstance(event, Replace):
                        job.writer.replace(await guard.restart(event.text) if guard is not None else event.text)
                    elif isinstance(event, FormRequired):
                        forms.append(event)
                    elif isinstance(event, Paused):
                        paused = True
                    elif isinstance(event, Progress):
                        if (shown := progress.add(event)) is not None:
                            job.writer.show_progress(shown)  # written with the text, within one tick
                    elif isinstance(event, AnswerFile) and event.source not in uploaded:
                        files.append(event)  # (a Chatflow may hand back the user's own uploads)
                    elif isinstance(event, Started):
                        conversation = event.conversation_id or conversation
                        job.task_id, job.message_id = event.task_id, event.message_id
                        answer = json.dumps({"message_id": event.message_id, "user": job.dify_user})
                        await self.best_effort(job, store.started, job.sid,
                                                {"task_id": event.task_id, "dify_user": job.dify_user},
                                                answer, s.feedback_ttl_seconds)
                    elif isinstance(event, ConversationDropped):
                        await self.best_effort(job, store.drop_conversation, job.scope)
                        conversation = None
                    elif isinstance(event, Finished):
                        conversation, job.usage = event.conversation_id or conversation, event.usage
            if guard is not None:
                job.writer.add(await guard.end())  # the held tail, checked
                job.moderation = job.moderation or ("answer_filtered" if guard.replaced else "")
            job.conversation_id = conversation or ""
            job.bot.health.record("ok")
            if conversation and job.resume is None:  # it succeeded: its conversation goes on (a form's run
                # belongs to the conversation it paused in, which /new may have ended since)
                await self.best_effort(job, store.set_conversation, job.scope, conversation,
                                        s.conversation_idle_seconds)
            if files:  # still the active answer: /stop reaches it while its images download
                await self.extras.add_files(job, files)
            if paused:  # at a Human Input form: a card for it, or a note saying where to go on
                note = await self.extras.offer_form(job, forms)
            elif job.polled and s.suggestions and job.message_id:
                await self.extras.suggest(job)
        except DifyError as exc:
            job.bot.health.record(error_label(exc))
            metrics.DIFY_ERRORS.labels(job.bot.id, error_label(exc)).inc()
            log.warning("dify failed", extra={"sid": job.sid, "code": error_label(exc)})
            return Outcome.FAILED, self._dify_message(s, exc)
        except UserNotAuthorized:  # refused while refreshing a token the backend rejected
            return Outcome.REFUSED, s.msg_unauthorized
        except AuthUnavailable:
            return Outcome.FAILED, s.msg_auth_unavailable
        finally:
            if progress.mode != "off":
                job.writer.show_progress(progress.final())  # steps go; a reasoning model's thoughts stay
            await self.best_effort(job, store.release_lease, active, job.sid)  # else it lapses
        return Outcome.FINISHED, note

    async def settle(self, job: Job, outcome: Outcome, note: str) -> None:
        """Write the final status (retrying Redis), let the conversation go on, then follow up."""
        e, store, bot = self.engine, job.bot.store, job.bot.id
        status = STATUS.get(outcome)
        if status:
            metrics.STREAM_SECONDS.labels(bot, status).observe(max(0.0, e.clock() - job.created))
            metrics.STREAMS_ENDED.labels(bot, "refused" if outcome is Outcome.REFUSED else status).inc()
        finished = bool(status) and await self._finish(job, status or "", note)
        steps: list[tuple[Callable[..., object], tuple[str, str]]] = [
            (store.queue_leave, (job.scope, job.sid)),
            (store.release_lease, (store.keys.stream_owner(job.sid), e.owner))]
        if job.first_in_line and (job.attachments or job.quoted_attachments):  # it was active while attaching
            steps.append((store.release_lease, (store.keys.active(job.scope), job.sid)))
        for step, args in steps:
            await self.best_effort(job, step, *args)
        if outcome is Outcome.STOPPED and job.task_id:
            await self._stop_dify(job)
        if finished and job.response_url:
            await self._follow_up(job, note)
        await e.reports.finished(job, outcome, note)

    async def _events(self, job: Job, conversation: str | None) -> AsyncGenerator[DifyEvent, None]:
        """Dify's events; a user token the backend rejects (401) is refreshed and retried once."""
        s = job.bot.settings
        for attempt in (0, 1):
            identity = job.identity
            inputs = identity.dify_inputs(s.inputs_from_user) if identity else {}
            token = self.token(job)
            try:
                if job.resume is not None:  # a form's choice: the paused run goes on
                    r = job.resume
                    answer = job.bot.dify.resume(r["run_id"], token=r["token"], action=r["action"],
                                                 inputs=r["values"], user=job.dify_user, authorization=token)
                else:
                    answer = job.bot.dify.chat(job.query, user=job.dify_user, conversation_id=conversation,
                                               inputs=inputs, authorization=token, files=job.files or None)
                async with aclosing(answer) as events:
                    async for event in events:
                        yield event
                return
            except DifyHTTPError as exc:
                if attempt or exc.status != 401 or not await self.reauthenticate(job):
                    raise

    def token(self, job: Job) -> str | None:
        """The user's token when Dify is called with user tokens, else None (the app key)."""
        if job.bot.settings.dify_auth_source == "user_token" and job.identity is not None:
            return job.identity.token
        return None

    async def reauthenticate(self, job: Job) -> bool:
        """After Dify refused the user's token (401): drop it and get a fresh one; False if there is none to renew."""
        auth, identity = job.bot.auth, job.identity
        if self.token(job) is None or auth is None or identity is None:
            return False
        await self.engine.io(job, auth.invalidate, identity)
        job.identity = await self.engine.io(job, auth.authenticate, job.wecom_user)  # raises UserNotAuthorized
        return True

    async def _stop_dify(self, job: Job) -> None:
        """Ask Dify to stop generating, as the job's own user when Dify is called with user tokens."""
        try:
            await job.bot.dify.stop(job.task_id, user=job.dify_user, authorization=self.token(job))
        except DifyError as exc:
            log.warning("dify stop failed", extra={"sid": job.sid, "code": error_label(exc)})

    async def _finish(self, job: Job, status: str, note: str) -> bool:
        """Flush and set the final status, retrying Redis with backoff until the job's deadline."""
        e, store = self.engine, job.bot.store
        deadline = job.created + job.bot.settings.stream_window_seconds + 30
        delay, check = 0.1, True
        while True:
            try:
                if job.writer is not None:
                    await e.redis(job.writer.flush)
                writes = job.writer.seq if job.writer is not None and check and not job.writer.lost else None
                if await e.redis(store.finish, job.sid, status, note, writes) is WriteResult.GAP and job.writer:
                    job.writer.rewrite()  # the text's last writes were lost (a failover): write it whole first
                    check = False
                    continue
                return True
            except StoreUnavailable:
                job.degraded = True
                if self.last_chance or e.clock() + delay > deadline:
                    log.error("giving up on stream: redis unavailable", extra={"sid": job.sid})
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _follow_up(self, job: Job, note: str) -> None:
        """Send through ``response_url`` what the stream could not show, exactly once.

        Normally that is ``send_rest``'s part. After Redis trouble, a poll may have answered "busy"
        and ended the stream for WeCom; whether one did shows in whether any poll showed its last
        frame. If none did, the whole answer goes out once (``mark_delivered``); so does the answer
        to a card click, which has no stream anyone polls.
        """
        e, s, url = self.engine, job.bot.settings, job.response_url
        store, delivery = job.bot.store, job.bot.delivery
        degraded = job.degraded or store.failed_at >= job.created
        for _ in range(2 if job.polled else 0):
            if degraded and not await self._seen(job):
                break
            try:
                await e.io(job, send_rest, store, delivery, job.sid, url, note, s)
                return
            except StoreUnavailable:
                if degraded:  # a poll showed the last frame, and Redis is gone again: nothing is lost
                    log.warning("follow-up skipped: redis unavailable", extra={"sid": job.sid})
                    return
                degraded = job.degraded = True
        try:
            claimed = await e.redis(store.mark_delivered, job.sid)
        except StoreUnavailable:
            claimed = True  # nobody can have delivered it without Redis either
        if claimed and job.follow_card is not None:  # it paused at a form: the card carries its text
            await e.io(job, delivery.send_card, url, job.follow_card)
        elif claimed:
            text = job.writer.text if job.writer else ""
            await e.io(job, delivery.send, url, join(text, job.image_links, note) or s.msg_done, s.msg_truncated)

    async def _seen(self, job: Job) -> bool:
        """Wait up to ``SEEN_GRACE`` for a poll to have shown the stream's last (or closing) frame."""
        e = self.engine
        until = e.clock() + SEEN_GRACE
        while True:
            try:
                snap = await e.redis(job.bot.store.snapshot, job.sid, 1)
                if snap is not None and ("seen" in snap.meta or snap.final is not None):
                    return True
            except StoreUnavailable:
                pass
            if e.clock() >= until:
                return False
            await asyncio.sleep(0.25)

    async def best_effort(self, job: Job, step: Callable[..., object], *args: object) -> None:
        """Run a Redis step the answer does not depend on; if Redis is away, note it and go on."""
        try:
            await self.engine.redis(step, *args)
        except StoreUnavailable:
            job.degraded = True
            log.warning("redis step skipped", extra={"sid": job.sid, "step": getattr(step, "__name__", "?")})

    @staticmethod
    def _dify_message(s: Settings, exc: DifyError) -> str:
        if isinstance(exc, DifyTimeout):
            return s.msg_dify_timeout
        if isinstance(exc, DifyHTTPError) and exc.status == 429:
            return s.msg_dify_busy
        if exc.code in ("human_input_form_submitted", "human_input_form_expired"):
            return s.msg_form_closed
        if exc.code == "workflow_stopped":  # stopped in Dify (its console, or a stop that raced the answer)
            return s.msg_stopped
        return s.msg_dify_failed

"""What an answer gets besides its text, once Dify has finished it: its files (images in the last frame,
links to the rest), the app's suggested questions, and the card of a form it paused at."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import TYPE_CHECKING, Any

from services.cards import clean_questions, form_card, keep_card, new_task_id, question_card
from services.delivery import join
from services.dify import AnswerFile, FormRequired
from services.engine.job import Job
from services.engine.parameters import app_parameters
from services.errors import DifyError, StoreUnavailable

if TYPE_CHECKING:
    from services.engine.answer import Answers

log = logging.getLogger(__name__)


class Extras:
    """The after-answer steps of one engine's answers."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    async def add_files(self, job: Job, files: list[AnswerFile]) -> None:
        """Put the answer's images in its last frame and links to the rest under its text."""
        assert job.writer is not None
        prepare = functools.partial(job.bot.answer_files.prepare, inline=not self.answers.engine.draining)
        try:
            reply = await self.answers.engine.io(job, prepare, files)
        except Exception:  # a file must never sink the answer: log it, and the text stands
            log.exception("answer files not prepared", extra={"sid": job.sid})
            return
        links = reply.text
        if reply.images:
            framed = job.polled and job.bot.settings.wecom_transport == "callback"  # (no msg_item on a long connection)
            if framed and await self._keep_images(job, reply.images, reply.image_links):
                job.image_links = reply.image_links
            else:  # the last frame cannot carry them: the images go as links
                links = join(reply.image_links, links)
        if links:
            if job.bot.moderator is not None:
                links = job.bot.moderator.redact(links)  # a file's name is text of the answer too
            job.writer.add(f"\n\n{links}" if job.writer.text else links)

    async def suggest(self, job: Job) -> None:
        """Offer the app's questions after the answer (a card in its last frame), when the app enables them."""
        bot, s = job.bot, job.bot.settings
        try:
            async with asyncio.timeout(s.suggestions_timeout):  # the last frame waits for them this long at most
                parameters = await app_parameters(self.answers.engine, bot, self.answers.token(job)) or {}
                after = parameters.get("suggested_questions_after_answer")
                if not (isinstance(after, dict) and after.get("enabled")):
                    return
                questions = clean_questions(await bot.dify.suggested(job.message_id, user=job.dify_user,
                                                                     authorization=self.answers.token(job)))
        except (DifyError, TimeoutError) as exc:
            log.info("no suggested questions", extra={"sid": job.sid, "reason": type(exc).__name__})
            return
        if bot.moderator is not None:
            questions = [q for q in questions if bot.moderator.allows(q)]
        if questions:
            card = question_card(new_task_id(), s.msg_suggestions_title, questions)
            await self.answers.best_effort(job, keep_card, bot.store, card, questions, s.card_ttl_seconds)
            await self.answers.best_effort(job, bot.store.set_fields, job.sid,
                                           {"card": json.dumps(card, ensure_ascii=False)})

    async def _keep_images(self, job: Job, images: list[dict[str, Any]], links: str) -> bool:
        """Store the images for the last frame (a few tries: a lost reply must not show them twice)."""
        for delay in (0.1, 0.3, 0.0):
            try:
                return bool(await self.answers.engine.redis(job.bot.store.put_images, job.sid, images, links) == 1)
            except StoreUnavailable:
                job.degraded = True
                await asyncio.sleep(delay)
        return False

    async def offer_form(self, job: Job, forms: list[FormRequired]) -> str:
        """Offer a paused run's form as a card; return a note when it cannot be one.

        The card goes in the answer's last frame, or (an answer nobody polls: a form after a form) through
        ``response_url`` with the answer's text on it, which WeCom takes only in a single chat. Its click
        resumes the run as the run's own Dify user, whoever clicks.
        """
        s = job.bot.settings
        form = forms[0] if forms else None
        moderator = job.bot.moderator
        if form is None or form.token is None or not form.complete or not form.actions or \
                (not job.polled and (job.chat or not job.response_url)) or \
                (moderator is not None and not moderator.allows(f"{form.title}\n{form.content}")):
            log.info("form not offered as a card", extra={"sid": job.sid})
            return s.msg_form_unsupported
        text = "" if job.polled or job.writer is None else job.writer.text
        card = form_card(new_task_id(), form, text)
        record = {"token": form.token, "run_id": form.run_id, "values": form.values, "user": job.dify_user,
                  "scope": job.scope, "actions": [list(a) for a in form.actions]}
        try:
            await self.answers.engine.redis(keep_card, job.bot.store, card, [], s.card_ttl_seconds, record)
            if job.polled:
                await self.answers.engine.redis(job.bot.store.set_fields, job.sid,
                                                {"card": json.dumps(card, ensure_ascii=False)})
        except StoreUnavailable:
            return s.msg_form_unsupported
        if not job.polled:
            job.follow_card = card
        if len(forms) > 1:
            log.info("parallel forms: only the first is offered", extra={"sid": job.sid, "forms": len(forms)})
        return ""

"""A job's media, from WeCom to Dify: download and decrypt each file, check the app takes it, upload it.

It runs right after authentication, before the job waits for its conversation's turn, because a
media URL expires 5 minutes after the message. A file the app would refuse (its type, how many,
how large, from the app's ``/parameters``, cached in Redis) is never uploaded: the user is told the
limit instead, and Dify is not asked.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING

from services import metrics
from services.dify.files import MB, FileRules, Refusal
from services.engine.job import Job
from services.engine.parameters import app_parameters
from services.errors import DifyError, DifyHTTPError
from services.media import Media, MediaError

if TYPE_CHECKING:
    from services.engine.engine import Engine

log = logging.getLogger(__name__)

KNOWN = {"image": "image", "video": "video"}
"""The Dify type a WeCom message type already tells (a ``file`` is known only from its bytes)."""


class AttachmentRefused(Exception):
    """The job's files cannot go to Dify; ``text`` tells the user why (its stream's final answer)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


async def attach(engine: Engine, job: Job, token: str | None) -> list[dict[str, str]]:
    """Download, check and upload ``job``'s attachments; return Dify's ``files`` (raises AttachmentRefused).

    The message's own media must all go, or the user is told why. A quote's media go along only if
    they still can (a quoted file is usually older than its URL's 5 minutes): else the quote's
    text marker (``[图片]``) alone stands for them.
    """
    bot = job.bot
    rules = await _rules(engine, job, token)
    own = [kind for kind, _ in job.attachments]
    if rules is not None:  # refuse what the message type already tells, before downloading anything
        known = [KNOWN[kind] for kind in own if kind in KNOWN]
        early = rules.check(known, [0] * len(known))
        if early is None and len(own) > rules.max_files:
            early = Refusal("too_many", rules.max_files)
        if early is not None:
            metrics.MEDIA.labels(bot.id, early.code).inc()
            raise AttachmentRefused(_explain(job, early))
    media = [await _download(engine, job, url) for _, url in job.attachments]
    refusal = rules.check([m.kind.dify_type for m in media], [len(m.data) for m in media]) if rules else None
    if refusal is not None:
        metrics.MEDIA.labels(bot.id, refusal.code).inc()
        raise AttachmentRefused(_explain(job, refusal))
    for _, url in job.quoted_attachments:
        try:
            quoted = await _download(engine, job, url)
        except AttachmentRefused:
            continue
        if rules is None or rules.check([m.kind.dify_type for m in [*media, quoted]],
                                        [len(m.data) for m in [*media, quoted]]) is None:
            media.append(quoted)
        else:
            metrics.MEDIA.labels(bot.id, "quote_dropped").inc()
    return [await _upload(engine, job, number, item, rules) for number, item in enumerate(media, 1)]


async def _download(engine: Engine, job: Job, url: str) -> Media:
    bot, s = job.bot, job.bot.settings
    try:
        own = job.media_keys.get(url)  # long connection: each media's own base64 aeskey
        return await engine.io(job, bot.media.fetch, url, _key_bytes(own) if own else s.wecom_encoding_aes_key)
    except MediaError as exc:
        metrics.MEDIA.labels(bot.id, exc.code).inc()
        log.warning("media not downloaded", extra={"sid": job.sid, "code": exc.code})
        if exc.code == "too_large":
            text = s.msg_media_too_large.replace("{limit}", str(max(1, s.media_max_bytes // MB)))
        else:
            text = s.msg_media_expired if exc.code == "expired" else s.msg_media_failed
        raise AttachmentRefused(text) from None


async def _upload(engine: Engine, job: Job, number: int, item: Media, rules: FileRules | None) -> dict[str, str]:
    bot, s = job.bot, job.bot.settings
    try:
        file_id = await _send(engine, job, item, f"wecom-{number}.{item.kind.extension}")
    except DifyHTTPError as exc:
        metrics.MEDIA.labels(bot.id, "upload_refused" if exc.status < 500 else "upload_failed").inc()
        log.warning("dify refused an upload", extra={"sid": job.sid, "status": exc.status, "code": exc.code})
        text = s.msg_media_not_accepted if exc.status in (400, 415) else s.msg_media_failed
        if exc.status == 413 and rules is not None:
            text = s.msg_media_too_large.replace("{limit}", str(rules.limits_mb[item.kind.dify_type]))
        raise AttachmentRefused(text) from None
    except DifyError as exc:
        metrics.MEDIA.labels(bot.id, "upload_failed").inc()
        log.warning("upload to dify failed", extra={"sid": job.sid, "code": exc.code})
        raise AttachmentRefused(s.msg_media_failed) from None
    metrics.MEDIA.labels(bot.id, "uploaded").inc()
    return {"type": item.kind.dify_type, "transfer_method": "local_file", "upload_file_id": file_id}


async def _send(engine: Engine, job: Job, item: Media, filename: str) -> str:
    """Upload as the chat will be sent; a user token Dify refuses (401) is renewed and the upload sent once more."""
    for attempt in (0, 1):
        try:
            return await job.bot.dify.upload(item.data, filename=filename, mime=item.kind.mime, user=job.dify_user,
                                             authorization=engine.answers.token(job))
        except DifyHTTPError as exc:
            if attempt or exc.status != 401 or not await engine.answers.reauthenticate(job):
                raise
    raise AssertionError("unreachable")


async def _rules(engine: Engine, job: Job, token: str | None) -> FileRules | None:
    """The app's file rules; None when they cannot be known (Dify will refuse what it does not take)."""
    parameters = await app_parameters(engine, job.bot, token)
    return FileRules.from_parameters(parameters) if parameters is not None else None


def _key_bytes(aeskey: str) -> bytes:
    """A media's own ``aeskey`` (base64 of 32 bytes); anything else gives no key (it will not decrypt)."""
    try:
        return base64.b64decode(aeskey, validate=True)
    except ValueError:
        return b""


def _explain(job: Job, refusal: Refusal) -> str:
    s = job.bot.settings
    text = {"too_large": s.msg_media_too_large, "too_many": s.msg_media_too_many}.get(refusal.code,
                                                                                      s.msg_media_not_accepted)
    return text.replace("{limit}", str(refusal.limit))

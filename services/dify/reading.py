"""Reading Dify's answers within their deadlines: the bytes of a response, its SSE events, its errors.

A read waits at most ``read_timeout``; a stream that sends only pings for ``idle_timeout`` has
stalled (dify-api.md §7.1); nothing outlives the request's total deadline. After a Chatflow's
``message_end`` the stream is read for ``CHATFLOW_GRACE`` more seconds for ``workflow_finished``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable

import aiohttp

from services.dify.events import ChatEventDecoder, Delta, DifyEvent, Finished, Started
from services.dify.sse import DEFAULT_MAX_FRAME_BYTES, SSEError, SSEParser
from services.errors import DifyHTTPError, DifyIncompleteError, DifyStaleConversation, DifyStreamError, DifyTimeout
from utils.payload import as_dict

log = logging.getLogger(__name__)

CHATFLOW_GRACE = 2.0  # seconds to wait for workflow_finished after a Chatflow's message_end (§7.3)
ERROR_BODY_LIMIT = 64 * 1024
BLOCKING_BODY_LIMIT = 16 * 1024 * 1024
Probe = Callable[[], Awaitable[bool]]
"""Asks Dify whether a quiet stream's conversation is gone (True: it is)."""
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class ResponseReader:
    """Reads responses of one Dify client with its timeouts and clock."""

    def __init__(self, *, read_timeout: float, idle_timeout: float, total_timeout: float,
                 clock: Callable[[], float], first_output: float = 20.0,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.read_timeout, self.idle_timeout, self.total_timeout = read_timeout, idle_timeout, total_timeout
        self.first_output = first_output  # seconds without a data frame before a stored conversation is checked
        self.clock = clock
        self.max_frame_bytes = max_frame_bytes

    async def read_all(self, resp: aiohttp.ClientResponse, deadline: float, limit: int) -> bytes:
        """The whole body (at most ``limit`` bytes, else DifyIncompleteError) by ``deadline``."""
        body = bytearray()
        while len(body) <= limit:
            data = await self.read(resp, deadline)
            if not data:
                return bytes(body)
            body += data
        raise DifyIncompleteError("answer body too large")

    async def read(self, resp: aiohttp.ClientResponse, until: float) -> bytes:
        """Read what is available, waiting until ``until`` (``read_timeout`` at most); b"" at EOF."""
        wait = until - self.clock()
        if wait <= 0:
            raise DifyTimeout("deadline reached")
        try:
            async with asyncio.timeout(min(self.read_timeout, wait)):
                return await resp.content.readany()
        except TimeoutError as e:
            raise DifyTimeout("read timeout") from e
        except (aiohttp.ClientError, OSError) as e:
            log.info("dify: stream cut: %s", type(e).__name__)
            return b""  # treated like EOF

    async def first_frame(self, resp: aiohttp.ClientResponse, deadline: float, limit: int = 64 * 1024) -> bytes:
        """The bytes up to the end of the stream's first frame (e.g. its ping), for ``stream``'s ``prefix``."""
        got = bytearray()
        while b"\n\n" not in got and len(got) <= limit:
            data = await self.read(resp, deadline)
            if not data:
                break
            got += data
        return bytes(got)

    async def stream(self, resp: aiohttp.ClientResponse, deadline: float,
                     probe: Probe | None = None, prefix: bytes = b"") -> AsyncGenerator[DifyEvent, None]:
        """The events of a streaming answer; it must end with a terminal event (or a Chatflow's grace).

        With ``probe``, a stream that sends no data frame for ``first_output`` seconds is asked about:
        when the probe says its conversation is gone, DifyStaleConversation ends it (dify-api.md §7.1).
        """
        state, parser = ChatEventDecoder(), SSEParser(self.max_frame_bytes)
        idle_until = self.clock() + self.idle_timeout
        quiet_until = self.clock() + self.first_output if probe is not None else None
        grace_until: float | None = None
        finished: Finished | None = None
        while finished is None:
            until = min(deadline, idle_until if grace_until is None else grace_until,
                        deadline if quiet_until is None else quiet_until)
            try:
                data, prefix = (prefix, b"") if prefix else (await self.read(resp, until), b"")
            except DifyTimeout as e:
                if grace_until is not None:
                    finished = Finished(state.conversation_id, state.usage)
                    break
                if probe is not None and quiet_until is not None and self.clock() >= quiet_until:
                    quiet_until = None  # asked once: a slow but healthy answer goes on to the idle deadline
                    if await probe():
                        raise DifyStaleConversation("only pings, and the conversation no longer exists") from e
                    continue
                raise self.timeout(deadline, idle_until) from e
            if not data:
                if grace_until is not None:
                    finished = Finished(state.conversation_id, state.usage)
                    break
                cut = "mid-frame" if parser.pending else "without a terminal event"
                raise DifyIncompleteError(f"stream ended {cut}")
            skipped = parser.skipped
            try:
                frames = parser.feed(data)
            except SSEError as e:
                raise DifyStreamError("invalid_sse", str(e)) from e
            if parser.skipped > skipped:
                log.warning("dify: dropped a progress frame larger than %d bytes", parser.max_frame_bytes)
            for frame in frames:
                if frame.data is None:
                    continue  # event: ping — not progress
                idle_until = self.clock() + self.idle_timeout
                quiet_until = None
                for event in state.handle(frame.data):
                    if isinstance(event, Finished):
                        finished = event
                        break
                    yield event
                if finished is not None:
                    break
                if state.message_ended and grace_until is None:
                    grace_until = min(deadline, self.clock() + CHATFLOW_GRACE)
            if finished is None and self.clock() >= deadline:
                raise DifyTimeout(f"total_timeout of {self.total_timeout}s exceeded")
        yield finished

    def timeout(self, deadline: float, idle_until: float) -> DifyTimeout:
        """The timeout error that names which deadline ran out."""
        now = self.clock()
        if now >= deadline:
            return DifyTimeout(f"total_timeout of {self.total_timeout}s exceeded")
        if now >= idle_until:
            return DifyTimeout(f"no data frame for {self.idle_timeout}s (pings only)", code="idle_timeout")
        return DifyTimeout(f"no bytes for {self.read_timeout}s", code="read_timeout")

    async def blocking(self, resp: aiohttp.ClientResponse, deadline: float) -> AsyncGenerator[DifyEvent, None]:
        """The events of a blocking (JSON) answer."""
        try:
            body = await self.read_all(resp, deadline, BLOCKING_BODY_LIMIT)
        except DifyTimeout as e:
            raise self.timeout(deadline, float("inf")) from e
        try:
            obj = json.loads(body)
        except ValueError as e:
            raise DifyIncompleteError("blocking response is not complete JSON") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("answer"), str):
            raise DifyIncompleteError("blocking response has no answer")
        conv, msg, task = (obj.get(k) for k in ("conversation_id", "message_id", "task_id"))
        if isinstance(conv, str) and isinstance(msg, str) and isinstance(task, str):
            yield Started(conv, msg, task)
        if obj["answer"]:
            yield Delta(obj["answer"])
        yield Finished(conv if isinstance(conv, str) else None, as_dict(as_dict(obj.get("metadata")).get("usage")))


async def http_error(resp: aiohttp.ClientResponse) -> DifyHTTPError:
    """Build a DifyHTTPError from Dify's ``{"code","message","status"}`` envelope or a gateway page."""
    status = int(resp.status)
    try:
        raw = await resp.content.read(ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, OSError):
        raw = b""
    finally:
        resp.close()
    try:
        env = json.loads(raw)
    except ValueError:
        env = None
    if isinstance(env, dict) and isinstance(env.get("code"), str):
        return DifyHTTPError(status, env["code"], str(env.get("message") or "")[:500])
    title = _TITLE.search(raw)
    text = title.group(1).decode("utf-8", "replace").strip()[:120] if title else ""
    return DifyHTTPError(status, f"http_{status}", text or str(resp.reason or "non-JSON error body"))

"""Dify service-API client on asyncio: POST /chat-messages and turn the answer into typed events.

Wire format (dify-api.md): §3 (SSE framing, event catalogue), §5 (error envelope), §7 (quirks).
Retries happen only before any output; once a stream has started, failures surface as DifyError.
One client serves every answer of a worker through one pooled ``aiohttp`` session, created on the
engine's event loop at first use. Cancelling the task that iterates ``chat`` closes its response.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from services.dify.sse import (
    ChatEventDecoder,
    ConversationDropped,
    Delta,
    DifyEvent,
    Finished,
    SSEError,
    SSEParser,
    Started,
)
from services.errors import (
    DifyConnectionError,
    DifyError,
    DifyHTTPError,
    DifyIncompleteError,
    DifyStreamError,
    DifyTimeout,
)

log = logging.getLogger(__name__)

CHATFLOW_GRACE = 2.0  # seconds to wait for workflow_finished after a Chatflow's message_end (§7.3)
_READ_SIZE = 64 * 1024
_ERROR_BODY_LIMIT = 64 * 1024
_BLOCKING_BODY_LIMIT = 16 * 1024 * 1024
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_STALE_CONVERSATION = "Conversation Not Exists"

Sleep = Callable[[float], Awaitable[None]]


class DifyClient:
    """Client for one Dify app; shared by every answer of the event loop it is used on."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        response_mode: Literal["streaming", "blocking"] = "streaming",
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 256,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        total_timeout: float = 300.0,
        idle_timeout: float = 120.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if response_mode not in ("streaming", "blocking"):
            raise ValueError(f"response_mode must be 'streaming' or 'blocking', not {response_mode!r}")
        if min(connect_timeout, read_timeout, total_timeout, idle_timeout) <= 0 or max_retries < 0:
            raise ValueError("timeouts must be positive and max_retries non-negative")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.response_mode = response_mode
        self._session, self._owns_session = session, session is None
        self.max_connections = max_connections
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.total_timeout, self.idle_timeout = total_timeout, idle_timeout
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max
        self._clock, self._sleep = clock, sleep

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on the loop that uses it (aiohttp binds to it)
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def chat(
        self,
        query: str,
        *,
        user: str,
        conversation_id: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        authorization: str | None = None,
        files: list[dict[str, str]] | None = None,
    ) -> AsyncGenerator[DifyEvent, None]:
        """Send ``query`` (with ``files``: uploaded ``local_file`` items) and yield its events.

        The total deadline starts now.
        """
        deadline = self._clock() + self.total_timeout
        body: dict[str, Any] = {
            "query": query,
            "inputs": dict(inputs or {}),
            "response_mode": self.response_mode,
            "user": user,
        }
        if conversation_id:
            body["conversation_id"] = conversation_id
        if files:
            body["files"] = files
        return self._chat(body, self._headers(authorization), deadline)

    async def stop(self, task_id: str, *, user: str, authorization: str | None = None) -> None:
        """Ask Dify to stop generating ``task_id`` (Dify answers success even for unknown tasks)."""
        url = f"{self.base_url}/chat-messages/{quote(task_id, safe='')}/stop"
        deadline = self._clock() + self.connect_timeout + self.read_timeout
        resp = await self._post(url, {"user": user}, self._headers(authorization), deadline)
        try:
            if resp.status >= 300:
                raise await _http_error(resp)
        finally:
            resp.release()

    async def upload(self, data: bytes, *, filename: str, mime: str, user: str,
                     authorization: str | None = None) -> str:
        """Upload one file (``POST /files/upload``) as ``user``; return its ``upload_file_id``.

        Dify answers 201 with the file's record; 400/413/415 come as its error envelope (DifyHTTPError).
        The same ``user`` must then send the chat that uses the file.
        """
        def form() -> aiohttp.FormData:  # a form is sent once: a retry needs a new one
            fields = aiohttp.FormData()
            fields.add_field("user", user)
            fields.add_field("file", io.BytesIO(data), filename=filename, content_type=mime)  # bytes would block
            return fields

        return str((await self._json("POST", "/files/upload", form, authorization, expect_id=True))["id"])

    async def parameters(self, authorization: str | None = None) -> dict[str, Any]:
        """The app's ``GET /parameters`` (its features and file upload settings)."""
        return await self._json("GET", "/parameters", lambda: None, authorization)

    async def _json(self, method: str, path: str, body: Callable[[], Any], authorization: str | None, *,
                    expect_id: bool = False) -> dict[str, Any]:
        """One JSON request; what cannot have been served (connection refused, 5xx, 429) is retried."""
        deadline = self._clock() + self.total_timeout
        headers = {**self._headers(authorization), "Accept": "application/json"}
        attempt = 0
        while True:
            try:
                resp = await self._post(f"{self.base_url}{path}", body(), headers, deadline, method=method)
                if resp.status < 300:
                    break
                raise await _http_error(resp)
            except DifyError as error:
                delay = min(self.backoff_max, self.backoff_base * 2**attempt)
                if not _retryable(error) or attempt >= self.max_retries or self._clock() + delay >= deadline:
                    raise
                log.warning("dify: %s %s (attempt %d), retrying in %.2fs", path, error.code, attempt + 1, delay)
                await self._sleep(delay)
                attempt += 1
        try:
            raw = await self._read_all(resp, deadline, _ERROR_BODY_LIMIT * 4)
        finally:
            resp.release() if resp.content.at_eof() else resp.close()
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise DifyIncompleteError(f"{path} answered with no JSON") from e
        if not isinstance(obj, dict) or (expect_id and not isinstance(obj.get("id"), str)):
            raise DifyIncompleteError(f"{path} answered without the expected fields")
        return obj

    async def _read_all(self, resp: aiohttp.ClientResponse, deadline: float, limit: int) -> bytes:
        body = bytearray()
        while len(body) <= limit:
            data = await self._read(resp, deadline)
            if not data:
                return bytes(body)
            body += data
        raise DifyIncompleteError("answer body too large")

    def _headers(self, authorization: str | None) -> dict[str, str]:
        accept = "text/event-stream" if self.response_mode == "streaming" else "application/json"
        return {
            "Authorization": f"Bearer {authorization or self._api_key}",
            "Accept": accept,
            "Accept-Encoding": "identity",
        }

    async def _chat(self, body: dict[str, Any], headers: dict[str, str],
                    deadline: float) -> AsyncGenerator[DifyEvent, None]:
        attempt = 0
        while True:
            try:
                resp = await self._post(f"{self.base_url}/chat-messages", body, headers, deadline)
                if resp.status < 300:
                    break
                raise await _http_error(resp)
            except DifyError as err:
                error = err
            if _is_stale_conversation(error) and "conversation_id" in body:
                log.info("dify: stored conversation rejected (404); retrying once without it")
                del body["conversation_id"]
                yield ConversationDropped()
                continue
            delay = min(self.backoff_max, self.backoff_base * 2**attempt)
            if not _retryable(error) or attempt >= self.max_retries or self._clock() + delay >= deadline:
                raise error
            log.warning("dify: %s (attempt %d), retrying in %.2fs", error.code, attempt + 1, delay)
            await self._sleep(delay)
            attempt += 1
        try:
            read = self._read_blocking if self.response_mode == "blocking" else self._read_stream
            async with aclosing(read(resp, deadline)) as events:
                async for event in events:
                    yield event
        finally:
            resp.release() if resp.content.at_eof() else resp.close()

    async def _post(self, url: str, body: Any, headers: dict[str, str], deadline: float,
                    method: str = "POST") -> aiohttp.ClientResponse:
        """Send a request (``body``: a dict sent as JSON, or aiohttp form data) and wait for its headers."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise DifyTimeout("total deadline exceeded")
        # sock_connect, not connect: waiting for a free pooled connection is not a connect timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(self.connect_timeout, remaining))
        try:
            async with asyncio.timeout(min(self.connect_timeout + self.read_timeout, remaining)):
                payload = {"json": body} if isinstance(body, dict) else {"data": body}
                return await self._http().request(method, url, headers=headers, timeout=timeout,
                                                  allow_redirects=False, **payload)
        except (aiohttp.ConnectionTimeoutError, aiohttp.ServerTimeoutError) as e:
            raise DifyTimeout("connect timeout", code="connect_timeout") from e
        except TimeoutError as e:
            raise DifyTimeout("read timeout waiting for response headers") from e
        except aiohttp.ClientConnectionError as e:
            raise DifyConnectionError(f"cannot reach Dify: {type(e).__name__}") from e
        except aiohttp.ClientError as e:
            raise DifyError(f"request failed: {type(e).__name__}", code="request_error") from e

    async def _read(self, resp: aiohttp.ClientResponse, until: float) -> bytes:
        """Read what is available, waiting until ``until`` (``read_timeout`` at most); b"" at EOF."""
        wait = until - self._clock()
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

    async def _read_stream(self, resp: aiohttp.ClientResponse, deadline: float) -> AsyncGenerator[DifyEvent, None]:
        state, parser = ChatEventDecoder(), SSEParser()
        idle_until = self._clock() + self.idle_timeout
        grace_until: float | None = None
        finished: Finished | None = None
        while finished is None:
            until = min(deadline, idle_until if grace_until is None else grace_until)
            try:
                data = await self._read(resp, until)
            except DifyTimeout as e:
                if grace_until is not None:
                    finished = Finished(state.conversation_id)
                    break
                raise self._timeout(deadline, idle_until) from e
            if not data:
                if grace_until is not None:
                    finished = Finished(state.conversation_id)
                    break
                cut = "mid-frame" if parser.pending else "without a terminal event"
                raise DifyIncompleteError(f"stream ended {cut}")
            try:
                frames = parser.feed(data)
            except SSEError as e:
                raise DifyStreamError("invalid_sse", str(e)) from e
            for frame in frames:
                if frame.data is None:
                    continue  # event: ping — not progress
                idle_until = self._clock() + self.idle_timeout
                for event in state.handle(frame.data):
                    if isinstance(event, Finished):
                        finished = event
                        break
                    yield event
                if finished is not None:
                    break
                if state.message_ended and grace_until is None:
                    grace_until = min(deadline, self._clock() + CHATFLOW_GRACE)
            if finished is None and self._clock() >= deadline:
                raise DifyTimeout(f"total_timeout of {self.total_timeout}s exceeded")
        yield finished

    def _timeout(self, deadline: float, idle_until: float) -> DifyTimeout:
        now = self._clock()
        if now >= deadline:
            return DifyTimeout(f"total_timeout of {self.total_timeout}s exceeded")
        if now >= idle_until:
            return DifyTimeout(f"no data frame for {self.idle_timeout}s (pings only)", code="idle_timeout")
        return DifyTimeout(f"no bytes for {self.read_timeout}s", code="read_timeout")

    async def _read_blocking(self, resp: aiohttp.ClientResponse, deadline: float) -> AsyncGenerator[DifyEvent, None]:
        try:
            body = await self._read_all(resp, deadline, _BLOCKING_BODY_LIMIT)
        except DifyTimeout as e:
            raise self._timeout(deadline, float("inf")) from e
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
        yield Finished(conv if isinstance(conv, str) else None)


async def _http_error(resp: aiohttp.ClientResponse) -> DifyHTTPError:
    """Build a DifyHTTPError from Dify's ``{"code","message","status"}`` envelope or a gateway page."""
    status = int(resp.status)
    try:
        raw = await resp.content.read(_ERROR_BODY_LIMIT)
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


def _is_stale_conversation(err: DifyError) -> bool:
    return (
        isinstance(err, DifyHTTPError) and err.status == 404 and err.message.startswith(_STALE_CONVERSATION)
    )


def _retryable(err: DifyError) -> bool:
    if isinstance(err, DifyHTTPError):
        return err.status >= 500 or (err.status == 429 and err.code == "too_many_requests")
    return err.code in ("connection_error", "connect_timeout")

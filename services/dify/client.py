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
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, Literal
from urllib.parse import quote, urlencode

import aiohttp

from services.dify.events import ConversationDropped, DifyEvent
from services.dify.reading import ERROR_BODY_LIMIT, ResponseReader, http_error
from services.dify.sse import DEFAULT_MAX_FRAME_BYTES
from services.errors import (
    DifyConnectionError,
    DifyError,
    DifyHTTPError,
    DifyIncompleteError,
    DifyStaleConversation,
    DifyTimeout,
)

log = logging.getLogger(__name__)

_STALE_CONVERSATION = "Conversation Not Exists"
RESUME_SETTLE = 0.3
"""Seconds between a paused run's first event (its subscription is live) and submitting its form."""

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
        first_output_timeout: float = 20.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
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
        self._reader = ResponseReader(read_timeout=read_timeout, idle_timeout=idle_timeout,
                                      total_timeout=total_timeout, clock=clock, first_output=first_output_timeout,
                                      max_frame_bytes=max_frame_bytes)

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
                raise await http_error(resp)
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

    async def resume(self, run_id: str, *, token: str, action: str, inputs: dict[str, str], user: str,
                     authorization: str | None = None) -> AsyncGenerator[DifyEvent, None]:
        """Answer a paused run's form and yield the rest of its answer (Dify >= 1.14).

        The run's event stream is opened first and the form submitted after: Dify relays events
        at most once, so a stream opened after the submit could miss the start of the answer.
        """
        deadline = self._clock() + self.total_timeout
        headers = {**self._headers(authorization), "Accept": "text/event-stream"}
        url = f"{self.base_url}/workflow/{quote(run_id, safe='')}/events?{urlencode({'user': user})}"
        resp = await self._post(url, None, headers, deadline, method="GET")
        try:
            if resp.status >= 300:
                raise await http_error(resp)
            body = {"inputs": inputs, "action": action, "user": user}
            first = await self._reader.first_frame(resp, deadline)  # Dify subscribes after its first ping
            await self._sleep(RESUME_SETTLE)
            try:  # sent once: a retry after a 5xx would only hear "already submitted"
                await self._json("POST", f"/form/human_input/{quote(token, safe='')}", lambda: body, authorization,
                                 retry=False)
            except DifyHTTPError as exc:
                if exc.status < 500:
                    raise
                log.warning("dify: form submit answered %d; reading the run in case it was taken", exc.status)
            async with aclosing(self._reader.stream(resp, deadline, prefix=first)) as events:
                async for event in events:
                    yield event
        finally:
            resp.release() if resp.content.at_eof() else resp.close()

    async def feedback(self, message_id: str, *, rating: str | None, user: str, content: str = "",
                       authorization: str | None = None) -> None:
        """Rate an answer (``POST /messages/{id}/feedbacks``): ``like``, ``dislike`` or None (withdrawn)."""
        body: dict[str, Any] = {"rating": rating, "user": user}
        if content:
            body["content"] = content
        await self._json("POST", f"/messages/{quote(message_id, safe='')}/feedbacks", lambda: body, authorization)

    async def suggested(self, message_id: str, *, user: str, authorization: str | None = None) -> list[Any]:
        """The questions Dify suggests after an answer (``GET /messages/{id}/suggested``)."""
        path = f"/messages/{quote(message_id, safe='')}/suggested?{urlencode({'user': user})}"
        data = (await self._json("GET", path, lambda: None, authorization)).get("data")
        return data if isinstance(data, list) else []

    async def parameters(self, authorization: str | None = None) -> dict[str, Any]:
        """The app's ``GET /parameters`` (its features and file upload settings)."""
        return await self._json("GET", "/parameters", lambda: None, authorization)

    async def _json(self, method: str, path: str, body: Callable[[], Any], authorization: str | None, *,
                    expect_id: bool = False, retry: bool = True) -> dict[str, Any]:
        """One JSON request; what cannot have been served (connection refused, 5xx, 429) is retried.

        Without ``retry`` only a request that surely never arrived (connection refused) is sent again.
        """
        label = path.split("?", 1)[0].rsplit("/", 1)[-1]  # (never the query: it names the user)
        deadline = self._clock() + self.total_timeout
        headers = {**self._headers(authorization), "Accept": "application/json"}
        attempt = 0
        while True:
            try:
                resp = await self._post(f"{self.base_url}{path}", body(), headers, deadline, method=method)
                if resp.status < 300:
                    break
                raise await http_error(resp)
            except DifyError as error:
                delay = min(self.backoff_max, self.backoff_base * 2**attempt)
                again = _retryable(error) if retry else error.code == "connection_error"
                if not again or attempt >= self.max_retries or self._clock() + delay >= deadline:
                    raise
                log.warning("dify: %s %s (attempt %d), retrying in %.2fs", label, error.code, attempt + 1, delay)
                await self._sleep(delay)
                attempt += 1
        try:
            raw = await self._reader.read_all(resp, deadline, ERROR_BODY_LIMIT * 4)
        finally:
            resp.release() if resp.content.at_eof() else resp.close()
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise DifyIncompleteError(f"{path} answered with no JSON") from e
        if not isinstance(obj, dict) or (expect_id and not isinstance(obj.get("id"), str)):
            raise DifyIncompleteError(f"{path} answered without the expected fields")
        return obj

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
                raise await http_error(resp)
            except DifyError as err:
                error = err
            if _is_stale_conversation(error) and "conversation_id" in body:
                log.info("dify: stored conversation rejected (404); retrying once without it")
                del body["conversation_id"]
                yield ConversationDropped()
                continue
            if body["response_mode"] == "blocking" and _rejects_blocking(error):
                log.warning("dify: the app does not answer in blocking mode (an Agent app); streaming from now on")
                self.response_mode = body["response_mode"] = "streaming"
                headers["Accept"] = "text/event-stream"
                continue
            delay = min(self.backoff_max, self.backoff_base * 2**attempt)
            if not _retryable(error) or attempt >= self.max_retries or self._clock() + delay >= deadline:
                raise error
            log.warning("dify: %s (attempt %d), retrying in %.2fs", error.code, attempt + 1, delay)
            await self._sleep(delay)
            attempt += 1
        try:
            if body["response_mode"] == "blocking":
                events = self._reader.blocking(resp, deadline)
            else:
                conversation = body.get("conversation_id")
                probe = (lambda: self._conversation_gone(conversation, body["user"], headers)) if conversation else None
                events = self._reader.stream(resp, deadline, probe)
            async with aclosing(events):
                async for event in events:
                    yield event
        except DifyStaleConversation:  # only pings (Dify #37197): nothing was yielded; ask again without it
            log.info("dify: stored conversation is gone (ping-only stream); retrying once without it")
            del body["conversation_id"]
            yield ConversationDropped()
            async with aclosing(self._chat(body, headers, deadline)) as again:
                async for event in again:
                    yield event
        finally:
            resp.release() if resp.content.at_eof() else resp.close()

    async def _conversation_gone(self, conversation: str, user: str, headers: dict[str, str]) -> bool:
        """True when Dify answers 404 for the conversation's messages (the probe of dify-api.md §7.1)."""
        query = urlencode({"conversation_id": conversation, "user": user, "limit": 1})
        try:
            resp = await self._post(f"{self.base_url}/messages?{query}", None,
                                    {**headers, "Accept": "application/json"},
                                    self._clock() + self.connect_timeout + self.read_timeout, method="GET")
        except DifyError:
            return False  # cannot tell: keep waiting for the answer
        if resp.status != 404:
            resp.close()
            return False
        error = await http_error(resp)  # Dify's own envelope, not a gateway's 404 page
        return error.code == "not_found" and error.message.startswith(_STALE_CONVERSATION)

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


def _is_stale_conversation(err: DifyError) -> bool:
    return (
        isinstance(err, DifyHTTPError) and err.status == 404 and err.message.startswith(_STALE_CONVERSATION)
    )


def _rejects_blocking(err: DifyError) -> bool:
    """Agent apps answer only in streaming mode (400 "Agent Chat App does not support blocking mode")."""
    return isinstance(err, DifyHTTPError) and err.status == 400 and "does not support blocking" in err.message


def _retryable(err: DifyError) -> bool:
    if isinstance(err, DifyHTTPError):
        return err.status >= 500 or (err.status == 429 and err.code == "too_many_requests")
    return err.code in ("connection_error", "connect_timeout")

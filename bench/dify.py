"""A small asyncio Dify for the benchmark: thousands of concurrent streaming answers on a fraction of a core.

Why not ``tools.dify_sim``: it runs one thread per open stream. With 2000 answers streaming at
once it took a whole core of the two (with most of the time in the kernel, switching threads) and
started answers seconds late, so the benchmark measured the simulator, not the bridge.

This server speaks the part of Dify's service API the benchmark uses, with the frames of
``tools.dify_sim`` for a Chatbot app on Dify >= 1.8.1 (see /work/shared/reference/dify-api.md):
``POST /v1/chat-messages`` in streaming mode, one ``data:`` frame per HTTP chunk, ``message`` frames
for the deltas, ``event: ping`` while silent, then ``message_end``; conversations owned by their
user (404 otherwise); ``POST /v1/chat-messages/<task_id>/stop``; HTTP/1.1 keep-alive. The answer
for each query comes from a ``Script``: the simulator waits ``delay`` before every delta (so the
first token comes ``delay`` after the request), then ``stall`` seconds (pinging every
``ping_interval`` if set) before the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

_USAGE = {
    "prompt_tokens": 12, "prompt_unit_price": "0.0", "prompt_price_unit": "0.0", "prompt_price": "0.0",
    "completion_tokens": 34, "completion_unit_price": "0.0", "completion_price_unit": "0.0",
    "completion_price": "0.0", "total_tokens": 46, "total_price": "0.0", "currency": "USD", "latency": 0.5,
    "time_to_first_token": None, "time_to_generate": None,
}
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nServer: dify-bench\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n")


@dataclass(frozen=True)
class Script:
    """How one query is answered."""

    answer: str
    delta_size: int = 2  # characters per delta
    delay: float = 0.0  # seconds before every delta
    stall: float = 0.0  # seconds of silence after the deltas, before message_end
    ping_interval: float = 0.0  # ping this often during the stall (0: never)

    def deltas(self) -> list[str]:
        size = max(1, self.delta_size)
        return [self.answer[i : i + size] for i in range(0, len(self.answer), size)]


class Dify:
    """The server; ``scripts`` maps a query to its Script, ``default`` answers every other query."""

    def __init__(self, default: Script, scripts: dict[str, Script]) -> None:
        self.default = default
        self.scripts = scripts
        self.conversations: dict[str, str] = {}  # id -> user
        self.tasks: dict[str, tuple[str, asyncio.Event]] = {}  # id -> (user, stop)

    async def serve(self, port: int) -> None:
        server = await asyncio.start_server(self.connection, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                if not await self.handle(method, path, headers, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                     writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False to close the connection."""
        if not headers.get("authorization", "").lower().startswith("bearer "):
            return await self.error(writer, 401, "unauthorized", "Access token is invalid")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        user = body.get("user")
        if method == "POST" and path.startswith("/v1/chat-messages/") and path.endswith("/stop"):
            task = self.tasks.get(path.split("/")[3])
            if task is not None and task[0] == user:
                task[1].set()
            return await self.send(writer, 200, b'{"result":"success"}', "application/json")
        if method != "POST" or path != "/v1/chat-messages":
            return await self.error(writer, 404, "not_found", "The requested URL was not found on the server.")
        query = body.get("query")
        if not isinstance(user, str) or not user or not isinstance(query, str) or not query:
            return await self.error(writer, 400, "invalid_param", "query and user are required")
        if body.get("response_mode") != "streaming":
            return await self.error(writer, 400, "invalid_param", "the benchmark's Dify streams only")
        conversation = str(body.get("conversation_id") or "")
        if conversation and self.conversations.get(conversation) != user:
            return await self.error(writer, 404, "not_found", "Conversation Not Exists.")
        if not conversation:
            conversation = str(uuid.uuid4())
            self.conversations[conversation] = user
        await self.stream(writer, self.scripts.get(query, self.default), conversation, user)
        return True

    async def stream(self, writer: asyncio.StreamWriter, script: Script, conversation: str, user: str) -> None:
        message, task = str(uuid.uuid4()), str(uuid.uuid4())
        stop = asyncio.Event()
        self.tasks[task] = (user, stop)
        base = {"conversation_id": conversation, "message_id": message, "created_at": int(time.time()),
                "task_id": task}

        async def chunk(data: bytes) -> None:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

        async def frame(event: str, **fields: Any) -> None:
            text = json.dumps({"event": event, **base, **fields}, ensure_ascii=False, separators=(",", ":"))
            await chunk(f"data: {text}\n\n".encode())

        async def wait(seconds: float) -> bool:  # True when stopped (noticed at the end of the wait)
            await asyncio.sleep(seconds)
            return stop.is_set()

        try:
            writer.write(_STREAM_HEAD)
            await writer.drain()
            for delta in script.deltas():
                if script.delay > 0 and await wait(script.delay):
                    break
                await frame("message", id=message, answer=delta, from_variable_selector=None)
            end = time.monotonic() + script.stall
            while not stop.is_set() and (left := end - time.monotonic()) > 0:
                if await wait(min(left, script.ping_interval) if script.ping_interval else left):
                    break
                if script.ping_interval and end - time.monotonic() > 0:
                    await chunk(b"event: ping\n\n")
            await frame("message_end", id=message,
                        metadata={"annotation_reply": None, "retriever_resources": [], "usage": _USAGE}, files=None)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.tasks.pop(task, None)

    async def error(self, writer: asyncio.StreamWriter, status: int, code: str, message: str) -> bool:
        body = (json.dumps({"code": code, "message": message, "status": status}) + "\n").encode()
        return await self.send(writer, status, body, "application/json")

    async def send(self, writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str) -> bool:
        writer.write(f"HTTP/1.1 {status} X\r\nServer: dify-bench\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        return True


def serve(port: int, default: Script, scripts: dict[str, Script]) -> None:
    """Serve until killed (the benchmark runs this in its own process)."""
    asyncio.run(Dify(default, scripts).serve(port))

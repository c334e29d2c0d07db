"""One bot's WebSocket to WeCom (wecom-protocol.md §4): subscribe, heartbeat, frames in, acknowledged frames out.

Every frame we send carries a ``req_id`` and is answered ``{"headers": {"req_id"}, "errcode", "errmsg"}``.
A ``ping`` goes out every ``ping_every`` seconds; two unanswered in a row mean the link is dead
(as Tencent's Node SDK decides). ``disconnected_event`` means another subscription of the bot took
over: the connection is over, and whoever holds the lease decides what happens next.

    LongConnError
    ├── BadCredentials     WeCom refused the BotID/Secret: retrying soon would only hammer it
    ├── Kicked             another subscription of the bot replaced this one
    └── LinkLost           the socket closed, or pongs stopped coming
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

Frame = dict[str, Any]
OnFrame = Callable[[Frame], Awaitable[None]]


RETRYABLE = frozenset({-1, 45009})
"""Subscribe answers that say "not now" (system busy, rate limited); any other refusal is the credentials'."""


class LongConnError(Exception):
    """The long connection cannot go on."""


class BadCredentials(LongConnError):
    """WeCom refused the bot's BotID or Secret."""


class Kicked(LongConnError):
    """Another subscription of the same bot took the connection over (``disconnected_event``)."""


class LinkLost(LongConnError):
    """The socket closed, or the heartbeat went unanswered."""


class LongConnection:
    """A subscribed WebSocket for one bot; ``run`` reads it until it ends, ``send`` writes acknowledged frames."""

    def __init__(self, url: str, bot_id: str, secret: str, on_frame: OnFrame, *,
                 session: aiohttp.ClientSession, ping_every: float = 30.0, ack_timeout: float = 5.0) -> None:
        self.url, self.bot_id, self._secret = url, bot_id, secret
        self.on_frame = on_frame
        self.session = session
        self.ping_every, self.ack_timeout = ping_every, ack_timeout
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._acks: dict[str, asyncio.Future[Frame]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False  # the heartbeat gave up on the link and is closing it

    async def open(self) -> None:
        """Connect and subscribe; raises BadCredentials or LinkLost."""
        try:
            self._ws = await self.session.ws_connect(self.url, heartbeat=None, autoping=True)
        except (aiohttp.ClientError, OSError) as exc:
            raise LinkLost(f"cannot connect: {type(exc).__name__}") from None
        reader = asyncio.get_running_loop().create_task(self._read_acks_only())
        try:
            ack = await self.send("aibot_subscribe", {"bot_id": self.bot_id, "secret": self._secret})
        finally:
            reader.cancel()
        code = ack.get("errcode")
        if code != 0:
            await self.close()
            if code in RETRYABLE:  # busy or rate limited: not a verdict on the credentials
                raise LinkLost(f"subscribe not taken now: errcode {code}")
            raise BadCredentials(f"subscribe refused: errcode {code}")

    async def run(self) -> None:
        """Read frames until the connection ends; always raises a LongConnError saying how it ended."""
        ws = self._require()
        beat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    log.warning("long connection: a frame that is not JSON")
                    continue
                if isinstance(frame, dict):
                    self._dispatch(frame)
            raise LinkLost("the socket closed")
        finally:
            if not beat.done():  # it may be closing the socket itself (pings unanswered): let it finish
                await asyncio.wait({beat}, timeout=1.0 if self._closing else 0)
                beat.cancel()
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(LinkLost("closed before the answer"))

    async def send(self, cmd: str, body: Frame, req_id: str | None = None) -> Frame:
        """Send a frame and wait for WeCom's answer to it (``errcode``); raises LinkLost."""
        ws = self._require()
        req_id = req_id or uuid.uuid4().hex
        if req_id in self._acks:  # one frame outstanding per req_id (a stream's updates reuse its req_id)
            raise LongConnError(f"{cmd}: a frame for this req_id is still unanswered")
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._acks[req_id] = future
        try:
            await ws.send_str(json.dumps({"cmd": cmd, "headers": {"req_id": req_id}, "body": body},
                                         ensure_ascii=False))
            return await asyncio.wait_for(future, self.ack_timeout)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise LinkLost(f"{cmd}: no answer ({type(exc).__name__})") from None
        finally:
            self._acks.pop(req_id, None)

    async def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    def _require(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is None:
            raise LinkLost("not connected")
        return self._ws

    def _dispatch(self, frame: Frame) -> None:
        req_id = str((frame.get("headers") or {}).get("req_id", ""))
        if "cmd" not in frame:  # WeCom's answer to one of our frames
            future = self._acks.get(req_id)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        body = frame.get("body") or {}
        event = (body.get("event") or {}) if isinstance(body, dict) else {}
        if frame.get("cmd") == "aibot_event_callback" and event.get("eventtype") == "disconnected_event":
            asyncio.get_running_loop().create_task(self.close())
            raise Kicked("another subscription of this bot took over")
        task = asyncio.get_running_loop().create_task(self._deliver(frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, frame: Frame) -> None:
        try:
            await self.on_frame(frame)
        except Exception:  # noqa: BLE001 - one bad message must not end the connection
            log.exception("long connection: handling a frame failed")

    async def _read_acks_only(self) -> None:
        """While subscribing: read the answer (nothing else can come before it)."""
        ws = self._require()
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    continue
                if isinstance(frame, dict) and "cmd" not in frame:
                    self._dispatch(frame)
                    return

    async def _heartbeat(self) -> None:
        missed = 0
        while True:
            await asyncio.sleep(self.ping_every)
            try:
                await self.send("ping", {})
                missed = 0
            except LinkLost:
                missed += 1
                if missed >= 2:
                    log.warning("long connection: two pings unanswered; closing")
                    self._closing = True
                    await self.close()
                    return

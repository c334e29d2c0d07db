"""WeCom's long-connection endpoint on loopback (wecom-protocol.md §4): a real WebSocket server for tests.

Frames are plain JSON ``{"cmd", "headers": {"req_id"}, "body"}``; every frame a bot sends is answered
``{"headers": {"req_id"}, "errcode", "errmsg"}``. A bot subscribes (``aibot_subscribe`` with its
BotID and Secret); a second subscription of the same bot kicks the first (it gets
``disconnected_event``, then the close). ``ping`` is answered like any frame. Messages and events
are pushed to the live connection by the test (``send_message``, ``send_event``); what the bot
answers is recorded per ``req_id``. A stream updated more than ``expire_after`` seconds after its
first frame gets 846608 ("stream message update expired"), and more than ``rate_limit`` frames a
second per ``req_id`` get 45009 (rate limited). Nothing here is used in production.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

EXPIRED = 846608
RATE_LIMITED = 45009
BAD_CREDENTIALS = 40058


@dataclass
class Connection:
    """One WebSocket a bot opened: what it sent, and how it ended."""

    number: int
    bot_id: str = ""
    frames: list[dict[str, Any]] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    closed: float | None = None
    kicked: bool = False


class LongConnectionSim:
    """The long-connection side of WeCom for a set of bots (``bot_id`` → ``secret``)."""

    def __init__(self, bots: dict[str, str], *, expire_after: float = 360.0, rate_limit: int = 20,
                 port: int = 0) -> None:
        self.bots = dict(bots)
        self.expire_after, self.rate_limit = expire_after, rate_limit
        self.connections: list[Connection] = []
        self.kicks = 0
        self.responses: dict[str, list[dict[str, Any]]] = {}  # req_id -> the bodies answered to it
        self._first: dict[str, float] = {}  # req_id -> when its first answer came
        self._recent: dict[str, list[float]] = {}
        self._live: dict[str, tuple[Connection, web.WebSocketResponse]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread()
        self.port = port
        self.mute_pings = False  # leave pings unanswered (a half-dead link)

    # -- life -------------------------------------------------------------------------------------------
    def start(self) -> LongConnectionSim:
        """Serve on a free loopback port in a thread of its own."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_get("/", self._socket)
            app.router.add_post("/control/send", self._control_send)  # for tools.wecom_sim --ws
            app.router.add_get("/control/answers", self._control_answers)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            server = site._server
            assert server is not None and server.sockets
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, name="wecom-ws-sim", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop)
        if not ready.wait(10):
            raise RuntimeError("the long-connection simulator did not start")
        return self

    def stop(self) -> None:
        """Close every connection and stop serving."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()

    @property
    def url(self) -> str:
        """The endpoint, as ``WECOM_WS_URL`` takes it."""
        return f"ws://127.0.0.1:{self.port}/"

    # -- what tests ask ------------------------------------------------------------------------------------
    def live(self, bot_id: str) -> Connection | None:
        """The connection subscribed for ``bot_id`` now, if any."""
        with self._lock:
            entry = self._live.get(bot_id)
        return entry[0] if entry else None

    def subscriptions(self, bot_id: str) -> list[Connection]:
        """Every connection that subscribed as ``bot_id``, in order."""
        with self._lock:
            return [c for c in self.connections if c.bot_id == bot_id]

    def send_message(self, bot_id: str, body: dict[str, Any]) -> str:
        """Push a message callback (``aibot_msg_callback``) to the bot's live connection; return its req_id."""
        return self._push(bot_id, "aibot_msg_callback", body)

    def send_event(self, bot_id: str, body: dict[str, Any]) -> str:
        """Push an event callback (``aibot_event_callback``); return its req_id."""
        return self._push(bot_id, "aibot_event_callback", body)

    def answers(self, req_id: str) -> list[dict[str, Any]]:
        """The bodies the bot answered ``req_id`` with, in order."""
        with self._lock:
            return list(self.responses.get(req_id, []))

    # -- the control API (loopback): another process plays the user -------------------------------------
    async def _control_send(self, request: web.Request) -> web.Response:
        """``POST /control/send`` ``{"bot_id", "cmd", "body"}`` → ``{"req_id"}`` (404: the bot is not subscribed)."""
        try:
            order = await request.json()
            bot_id, cmd, body = order["bot_id"], order.get("cmd", "aibot_msg_callback"), order["body"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "send {bot_id, cmd, body}"}, status=400)
        with self._lock:
            entry = self._live.get(bot_id)
        if entry is None:
            return web.json_response({"error": f"bot {bot_id} is not subscribed"}, status=404)
        req_id = uuid.uuid4().hex
        await entry[1].send_str(json.dumps({"cmd": cmd, "headers": {"req_id": req_id}, "body": body},
                                           ensure_ascii=False))
        return web.json_response({"req_id": req_id})

    async def _control_answers(self, request: web.Request) -> web.Response:
        """``GET /control/answers?req_id=`` → ``{"answers": [...]}``."""
        return web.json_response({"answers": self.answers(request.query.get("req_id", ""))})

    # -- the socket --------------------------------------------------------------------------------------
    def _push(self, bot_id: str, cmd: str, body: dict[str, Any]) -> str:
        with self._lock:
            entry = self._live.get(bot_id)
        if entry is None or self._loop is None:
            raise RuntimeError(f"bot {bot_id} has no live connection")
        req_id = uuid.uuid4().hex
        frame = {"cmd": cmd, "headers": {"req_id": req_id}, "body": body}
        asyncio.run_coroutine_threadsafe(entry[1].send_str(json.dumps(frame, ensure_ascii=False)), self._loop).result(5)
        return req_id

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        with self._lock:
            conn = Connection(number=len(self.connections) + 1)
            self.connections.append(conn)
        try:
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    continue
                conn.frames.append(frame)
                if frame.get("cmd") == "ping" and self.mute_pings:
                    continue
                code, text = await self._handle(conn, ws, frame)
                req_id = (frame.get("headers") or {}).get("req_id", "")
                await ws.send_str(json.dumps({"headers": {"req_id": req_id}, "errcode": code, "errmsg": text}))
                if code == BAD_CREDENTIALS:
                    await ws.close()
        finally:
            conn.closed = time.monotonic()
            with self._lock:
                if self._live.get(conn.bot_id, (None, None))[0] is conn:
                    del self._live[conn.bot_id]
        return ws

    async def _handle(self, conn: Connection, ws: web.WebSocketResponse, frame: dict[str, Any]) -> tuple[int, str]:
        cmd, body = frame.get("cmd"), frame.get("body") or {}
        req_id = (frame.get("headers") or {}).get("req_id", "")
        if cmd == "aibot_subscribe":
            bot_id = body.get("bot_id", "")
            if self.bots.get(bot_id) != body.get("secret"):
                return BAD_CREDENTIALS, "invalid bot_id or secret"
            with self._lock:
                old = self._live.get(bot_id)
                conn.bot_id = bot_id
                self._live[bot_id] = (conn, ws)
            if old is not None:  # one live connection per bot: the old one is told, then closed
                self.kicks += 1
                old[0].kicked = True
                event = {"cmd": "aibot_event_callback", "headers": {"req_id": uuid.uuid4().hex},
                         "body": {"msgtype": "event", "event": {"eventtype": "disconnected_event"}}}
                await old[1].send_str(json.dumps(event))
                await old[1].close()
            return 0, "ok"
        if not conn.bot_id or self._live.get(conn.bot_id, (None, None))[0] is not conn:
            return 40001, "not subscribed"
        if cmd == "ping":
            return 0, "ok"
        if cmd in ("aibot_respond_msg", "aibot_respond_welcome_msg", "aibot_respond_update_msg", "aibot_send_msg"):
            now = time.monotonic()
            with self._lock:
                first = self._first.setdefault(req_id, now)
                recent = [t for t in self._recent.get(req_id, []) if now - t < 1.0]
                if now - first > self.expire_after:
                    return EXPIRED, "stream message update expired"
                if len(recent) >= self.rate_limit:
                    return RATE_LIMITED, "api freq out of limit"
                self._recent[req_id] = [*recent, now]
                self.responses.setdefault(req_id, []).append(body)
            return 0, "ok"
        return 40004, f"unknown cmd {cmd}"

"""A long-connection bot on one worker: it stands by or holds the bot's WebSocket, answers what comes in
through the same handler as callbacks, and pushes every live answer's frames from the stream store.

A message is put in the bot's inbox in Redis by the holder and answered by whichever worker takes it
first; standbys take at once, the holder only what waited ``HOLDER_TAKES_AFTER`` (no standby is up).
So the holder's death does not take its answers with it: they are produced elsewhere, and the new
holder pushes them.

Callbacks come in as ``aibot_msg_callback`` / ``aibot_event_callback`` with the bodies of webhook
mode (wecom-protocol.md §4). The handler's reply is pushed instead of returned: a stream frame as
``aibot_respond_msg`` under the callback's ``req_id``, a welcome as ``aibot_respond_welcome_msg``, a
card update as ``aibot_respond_update_msg``. Every live stream is registered in Redis (its ``req_id``
and what was last pushed), so whichever worker holds the connection pushes its updates, and a new
holder after a failover carries on from what was already sent: the user sees each answer once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp

from services.bot import Bot
from services.errors import StoreUnavailable
from services.longconn.connection import LinkLost, LongConnection, LongConnError
from services.longconn.holder import Holder
from services.longconn.lease import HolderLease
from services.longconn.outbox import Outbox
from services.messages import MessageHandler
from services.streams.records import store_errors

if TYPE_CHECKING:
    from services.engine import Engine

log = logging.getLogger(__name__)

PUSH_EVERY = 0.3
"""Seconds between two pushes of one answer: coalesces fast answers under WeCom's rate limits."""
EXPIRED, RATE_LIMITED = 846608, 45009
STREAM_LIFE_MS = 420_000
"""How long a stream stays registered for pushing: WeCom takes updates for 6 minutes after the first."""
FOLLOW_UPS_PER_TICK = 5
REPLIES = {"enter_chat": "aibot_respond_welcome_msg", "template_card_event": "aibot_respond_update_msg"}
INBOX_EVERY = 0.1
"""Seconds between two looks at an empty inbox."""
HOLDER_TAKES_AFTER = 1.0
"""Seconds a message waits in the inbox for a standby before the holder answers it itself."""


class LongConnectionBot:
    """One long-connection bot on this worker (a service of the engine's loop)."""

    def __init__(self, bot: Bot, handler: MessageHandler, engine: Engine, owner: str) -> None:
        s = bot.settings
        self.bot, self.handler, self.engine = bot, handler, engine
        self.key = bot.store.keys.ws_streams(s.wecom_bot_id)
        self.inbox = bot.store.keys.ws_inbox(s.wecom_bot_id)
        self._session: aiohttp.ClientSession | None = None
        lease = HolderLease(bot.store, s.wecom_bot_id, owner, int(s.ws_lease_seconds * 1000))
        self.holder = Holder(lease, self._connect, engine.redis)

    async def run(self) -> None:
        """Hold (or stand by for) the connection and push answers, until stopped."""
        self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._push_loop()), loop.create_task(self._inbox_loop())]
        try:
            await self.holder.run()
        finally:
            for task in helpers:
                task.cancel()
            await self._session.close()

    async def stop(self) -> None:
        """Hand the connection over at once (SIGTERM)."""
        await self.holder.stop()

    def _connect(self) -> LongConnection:
        s = self.bot.settings
        assert self._session is not None
        return LongConnection(s.wecom_ws_url, s.wecom_bot_id, s.wecom_ws_secret, self._on_frame,
                              session=self._session)

    # -- in ----------------------------------------------------------------------------------------------
    async def _on_frame(self, frame: dict[str, Any]) -> None:
        cmd, body = frame.get("cmd"), frame.get("body")
        req_id = str((frame.get("headers") or {}).get("req_id", ""))
        if cmd not in ("aibot_msg_callback", "aibot_event_callback") or not isinstance(body, dict) or not req_id:
            return
        if cmd == "aibot_msg_callback":  # answered by whichever worker takes it (see the module's note)
            await self.engine.redis(self._enqueue, req_id, body)
            return
        reply, outcome = await asyncio.to_thread(self.handler.handle, body)  # an event: answered here, in 5 s
        log.info("long connection callback", extra={"cmd": cmd, "outcome": outcome})
        if reply is None:
            return
        if reply.get("msgtype") in ("stream", "stream_with_template_card"):
            stream = reply["stream"]
            await self.engine.redis(self._register, stream["id"], req_id)
            await self._push(stream["id"], req_id, reply, _digest(reply))
            return
        kind = str((body.get("event") or {}).get("eventtype", "")) if isinstance(body.get("event"), dict) else ""
        command = REPLIES.get(kind)
        if command is not None:
            await self._send(command, req_id, reply)

    async def _inbox_loop(self) -> None:
        """Answer the messages of the inbox: at once on a standby, after a wait on the holder."""
        while True:
            if self.engine.draining:  # leaving: the messages are for the workers that stay
                await asyncio.sleep(INBOX_EVERY)
                continue
            try:
                item = await self.engine.redis(self._dequeue, self.holder.holding)
            except StoreUnavailable:
                await asyncio.sleep(1.0)
                continue
            if item is None:
                await asyncio.sleep(INBOX_EVERY)
                continue
            try:
                reply, _ = await asyncio.to_thread(self.handler.handle, item["body"])
                if reply is not None and reply.get("msgtype") in ("stream", "stream_with_template_card"):
                    await self.engine.redis(self._register, reply["stream"]["id"], str(item["req_id"]))
            except Exception:  # noqa: BLE001 - one message must not stop the inbox
                log.exception("long connection: answering a message failed")

    # -- out ---------------------------------------------------------------------------------------------
    async def _push_loop(self) -> None:
        """While this worker holds the connection: push every registered answer whose frame changed,
        then send the follow-ups waiting in the outbox."""
        while True:
            await asyncio.sleep(PUSH_EVERY)
            if self.holder.connection is None:
                continue
            await self._send_follow_ups()
            try:
                streams = await self.engine.redis(self._registered)
            except StoreUnavailable:
                continue
            for sid, entry in streams.items():
                frame = await asyncio.to_thread(self.handler.peek, sid)
                if frame is None:
                    continue  # Redis did not answer: never push a "busy" ending for a blip; look again
                if not entry.get("sent"):  # the answer's first frame WeCom sees: rating on
                    frame["stream"]["feedback"] = {"id": sid}
                digest = _digest(frame)
                if digest != entry.get("sent"):
                    await self._push(sid, str(entry.get("req_id", "")), frame, digest)

    async def _send_follow_ups(self) -> None:
        outbox = self.bot.delivery
        if not isinstance(outbox, Outbox):
            return
        for _ in range(FOLLOW_UPS_PER_TICK):
            try:
                item = await self.engine.redis(outbox.take)
            except StoreUnavailable:
                return
            if item is None:
                return
            ack = await self._send("aibot_send_msg", uuid.uuid4().hex, item)
            if ack is None or ack.get("errcode") == RATE_LIMITED:  # not sent: first in line again
                try:
                    await self.engine.redis(outbox.put_back, item)
                except StoreUnavailable:
                    log.warning("long connection: a follow-up was lost (redis unavailable)")
                return
            if ack.get("errcode") != 0:
                log.warning("long connection: WeCom refused a follow-up", extra={"errcode": ack.get("errcode")})

    async def _push(self, sid: str, req_id: str, frame: dict[str, Any], digest: str) -> None:
        ack = await self._send("aibot_respond_msg", req_id, _pushable(frame))
        code = ack.get("errcode") if ack is not None else None
        if code not in (0, EXPIRED):  # not taken (rate limit, a passing error): the next tick tries again
            if code not in (None, RATE_LIMITED):
                log.warning("long connection: WeCom refused an update", extra={"sid": sid, "errcode": code})
            return
        finished = bool(frame["stream"].get("finish")) or code == EXPIRED
        try:
            await self.engine.redis(self._sent, sid, req_id, digest, finished)
        except StoreUnavailable:
            pass  # pushed again next tick: the same content, harmless

    async def _send(self, cmd: str, req_id: str, body: dict[str, Any]) -> dict[str, Any] | None:
        connection = self.holder.connection
        if connection is None:
            return None
        try:
            return await connection.send(cmd, body, req_id)
        except (LinkLost, LongConnError) as exc:
            log.info("long connection: not sent", extra={"cmd": cmd, "reason": str(exc)})
            return None

    # -- the inbox and the registry of live streams (Redis) -------------------------------------------------
    def _enqueue(self, req_id: str, body: dict[str, Any]) -> None:
        item = json.dumps({"req_id": req_id, "body": body, "at": self.bot.store.now_ms()}, ensure_ascii=False)
        with store_errors():
            pipe = self.bot.store.redis.pipeline(transaction=True)
            pipe.lpush(self.inbox, item)
            pipe.pexpire(self.inbox, STREAM_LIFE_MS)
            pipe.execute()

    def _dequeue(self, holding: bool) -> dict[str, Any] | None:
        """The oldest message, if any (the holder: only one older than ``HOLDER_TAKES_AFTER``).

        A plain RPOP, polled: a blocking pop would hold one of the engine's Redis threads, and a pop
        Redis served as the client's socket timed out would lose the message.
        """
        r = self.bot.store.redis
        with store_errors():
            if not holding:
                taken = r.rpop(self.inbox)
            else:
                oldest = r.lindex(self.inbox, -1)
                try:
                    waited = self.bot.store.now_ms() - int(json.loads(oldest)["at"]) if oldest else 0
                except (ValueError, KeyError, TypeError):
                    waited = 10**9  # unreadable: take it out of the way
                taken = r.rpop(self.inbox) if oldest and waited >= HOLDER_TAKES_AFTER * 1000 else None
        raw = taken if isinstance(taken, bytes | str) else None
        try:
            item = json.loads(raw) if raw else None
        except ValueError:
            return None
        return item if isinstance(item, dict) and isinstance(item.get("body"), dict) else None


    def _register(self, sid: str, req_id: str) -> None:
        with store_errors():
            pipe = self.bot.store.redis.pipeline(transaction=True)
            pipe.hsetnx(self.key, sid, json.dumps({"req_id": req_id, "sent": ""}))
            pipe.pexpire(self.key, STREAM_LIFE_MS)
            pipe.execute()

    def _registered(self) -> dict[str, dict[str, Any]]:
        with store_errors():
            raw = self.bot.store.redis.hgetall(self.key)
        out: dict[str, dict[str, Any]] = {}
        for sid, value in raw.items():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out[sid.decode() if isinstance(sid, bytes) else str(sid)] = entry
        return out

    def _sent(self, sid: str, req_id: str, digest: str, finished: bool) -> None:
        with store_errors():
            pipe = self.bot.store.redis.pipeline(transaction=True)
            if finished:
                pipe.hdel(self.key, sid)
            else:
                pipe.hset(self.key, sid, json.dumps({"req_id": req_id, "sent": digest}))
            pipe.pexpire(self.key, STREAM_LIFE_MS)
            pipe.execute()


def _digest(frame: dict[str, Any]) -> str:
    stream = frame.get("stream") or {}
    raw = json.dumps([stream.get("content"), stream.get("finish")], ensure_ascii=False)
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()


def _pushable(frame: dict[str, Any]) -> dict[str, Any]:
    """A stream frame as ``aibot_respond_msg`` takes it: no ``msg_item`` on the long connection (an answer's
    images come as links there), a card (suggestions, a form) kept with its stream."""
    stream = {k: v for k, v in (frame.get("stream") or {}).items() if k != "msg_item"}
    body: dict[str, Any] = {"msgtype": frame.get("msgtype", "stream"), "stream": stream}
    if "template_card" in frame:
        body["template_card"] = frame["template_card"]
    return body

"""The long connection against a real WebSocket server speaking WeCom's frames: subscribe, heartbeat, acks,
kicks; and holders on one Redis: exactly one subscription, failover, handover, no kick loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis

from services.longconn.connection import BadCredentials, Kicked, LinkLost, LongConnection
from services.longconn.holder import Holder
from services.longconn.lease import HolderLease
from services.streams.keys import Keys
from services.streams.store import StreamStore
from tools.wecom_ws_sim import LongConnectionSim

BOT, SECRET = "aibot-1", "s3cret"
KEYS = Keys("lc:")


@pytest.fixture
def sim() -> Iterator[LongConnectionSim]:
    server = LongConnectionSim({BOT: SECRET}).start()
    yield server
    server.stop()


async def until(predicate: Callable[[], bool], timeout: float) -> float:
    """Wait for ``predicate``; return how long it took (fails after ``timeout``)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_subscribe_frames_acks_and_heartbeat(sim: LongConnectionSim) -> None:
    received: list[dict[str, Any]] = []

    async def scenario() -> None:
        async def on_frame(frame: dict[str, Any]) -> None:
            received.append(frame)

        async with aiohttp.ClientSession() as session:
            bad = LongConnection(sim.url, BOT, "wrong", on_frame, session=session)
            with pytest.raises(BadCredentials):
                await bad.open()
            conn = LongConnection(sim.url, BOT, SECRET, on_frame, session=session, ping_every=0.1)
            await conn.open()
            reader = asyncio.get_running_loop().create_task(conn.run())
            await until(lambda: sim.live(BOT) is not None, 2)
            req_id = await asyncio.to_thread(sim.send_message, BOT, {"msgtype": "text", "text": {"content": "你好"}})
            await until(lambda: bool(received), 2)
            assert received[0]["cmd"] == "aibot_msg_callback" and received[0]["headers"]["req_id"] == req_id
            body = {"msgtype": "stream", "stream": {"id": "s1", "finish": True, "content": "你好！"}}
            ack = await conn.send("aibot_respond_msg", body, req_id)
            assert ack["errcode"] == 0 and sim.answers(req_id) == [body]
            await until(lambda: sum(f.get("cmd") == "ping" for f in sim.live(BOT).frames) >= 2, 2)  # type: ignore[union-attr]
            await conn.close()
            with pytest.raises(Exception):  # noqa: B017 - it ends, saying how
                await reader

    asyncio.run(scenario())


def test_a_second_subscription_kicks_the_first(sim: LongConnectionSim) -> None:
    async def scenario() -> None:
        async def ignore(frame: dict[str, Any]) -> None:
            pass

        async with aiohttp.ClientSession() as session:
            first = LongConnection(sim.url, BOT, SECRET, ignore, session=session)
            await first.open()
            reader = asyncio.get_running_loop().create_task(first.run())
            second = LongConnection(sim.url, BOT, SECRET, ignore, session=session)
            await second.open()
            with pytest.raises(Kicked):
                await reader
            assert sim.kicks == 1 and sim.live(BOT) is not None and sim.live(BOT).number == 2  # type: ignore[union-attr]
            await second.close()

    asyncio.run(scenario())


# -- holders: one per worker of each replica, on one Redis ------------------------------------------------

def holders(redis_client: redis.Redis, sim: LongConnectionSim, session: aiohttp.ClientSession,
            owners: list[str], lease_ms: int = 1500) -> list[Holder]:
    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def ignore(frame: dict[str, Any]) -> None:
        pass

    def connect() -> LongConnection:
        return LongConnection(sim.url, BOT, SECRET, ignore, session=session)

    store = StreamStore(redis_client, KEYS)
    return [Holder(HolderLease(store, BOT, owner, lease_ms), connect, off_loop, standby_poll=0.2) for owner in owners]


def live_owner(sim: LongConnectionSim, pairs: list[tuple[Holder, asyncio.Task[None]]]) -> Holder | None:
    return next((h for h, _ in pairs if h.holding and h.connection is not None), None)


def run_holders(redis_client: redis.Redis, sim: LongConnectionSim,
                body: Callable[[list[tuple[Holder, asyncio.Task[None]]]], Awaitable[None]]) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            hs = holders(redis_client, sim, session, ["replica-a", "replica-b"])
            pairs = [(h, asyncio.get_running_loop().create_task(h.run())) for h in hs]
            try:
                await body(pairs)
            finally:
                for h, task in pairs:
                    await h.stop()
                    task.cancel()

    asyncio.run(scenario())


def test_exactly_one_holder_subscribes_and_a_standby_replaces_a_dead_one(
        redis_client: redis.Redis, sim: LongConnectionSim) -> None:
    async def body(pairs: list[tuple[Holder, asyncio.Task[None]]]) -> None:
        await until(lambda: sim.live(BOT) is not None, 3)
        await asyncio.sleep(1.0)
        assert len(sim.subscriptions(BOT)) == 1 and sum(h.holding for h, _ in pairs) == 1
        dead = next(t for h, t in pairs if h.holding)
        dead.cancel()  # the holder's process is gone: it renews nothing and frees nothing
        took = await until(lambda: len(sim.subscriptions(BOT)) == 2 and sim.live(BOT) is not None, 10)
        assert took < 1.5 + 1.0  # the lease (1.5 s) plus a standby's look
        assert sim.kicks == 0  # the dead one's socket closed with it: nobody was kicked

    run_holders(redis_client, sim, body)


def test_a_stopping_holder_hands_over_at_once(redis_client: redis.Redis, sim: LongConnectionSim) -> None:
    async def body(pairs: list[tuple[Holder, asyncio.Task[None]]]) -> None:
        await until(lambda: sim.live(BOT) is not None, 3)
        holder = next(h for h, _ in pairs if h.holding)
        await holder.stop()  # SIGTERM: close and free the lease
        took = await until(lambda: len(sim.subscriptions(BOT)) == 2 and sim.live(BOT) is not None, 3)
        assert took < 1.0 and sim.kicks == 0

    run_holders(redis_client, sim, body)


def test_a_split_brain_settles_without_a_kick_loop(redis_client: redis.Redis, sim: LongConnectionSim) -> None:
    async def body(pairs: list[tuple[Holder, asyncio.Task[None]]]) -> None:
        await until(lambda: sim.live(BOT) is not None, 3)
        redis_client.delete(KEYS.ws_holder(BOT))  # by hand, while the holder is up: the other takes a term
        await until(lambda: len(sim.subscriptions(BOT)) >= 2, 5)
        await asyncio.sleep(4.0)
        assert sim.kicks == 1  # the old holder was kicked once, let go, and stands by
        assert sum(h.holding for h, _ in pairs) == 1 and len(sim.subscriptions(BOT)) == 2

    run_holders(redis_client, sim, body)


def test_unanswered_pings_end_the_connection(sim: LongConnectionSim) -> None:
    async def scenario() -> None:
        async def ignore(frame: dict[str, Any]) -> None:
            pass

        async with aiohttp.ClientSession() as session:
            conn = LongConnection(sim.url, BOT, SECRET, ignore, session=session, ping_every=0.1, ack_timeout=0.1)
            await conn.open()
            sim.mute_pings = True  # the link is half dead: frames go out, nothing comes back
            started = time.monotonic()
            with pytest.raises(LinkLost):
                await asyncio.wait_for(conn.run(), 5)
            assert time.monotonic() - started < 1.5  # two pings unanswered, not the socket's own timeout

    asyncio.run(scenario())

"""A long-connection bot end to end: subscribed by the engine, a message answered through the same handler
as callbacks, its answer pushed frame by frame under the callback's req_id until finished."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from tests.helpers import wait_for
from tools.dify_sim import DifySimulator, Script
from tools.wecom_ws_sim import LongConnectionSim

BOT, SECRET = "aibot-ws", "ws-secret"


@pytest.fixture
def sim() -> Iterator[LongConnectionSim]:
    server = LongConnectionSim({BOT: SECRET}).start()
    yield server
    server.stop()


@pytest.fixture
def ws_app(settings: Settings, redis_client: redis.Redis, sim: LongConnectionSim) -> Iterator[Flask]:
    app = create_app(settings.replace(wecom_transport="websocket", wecom_bot_id=BOT, wecom_ws_secret=SECRET,
                                      wecom_ws_url=sim.url, ws_lease_seconds=3.0))
    app.extensions["wecom_dify"].engine.start()  # gunicorn's post_worker_init does this
    yield app
    app.extensions["wecom_dify"].engine.drain(5)


def text(content: str, userid: str = "zhangsan") -> dict[str, Any]:
    return {"msgid": uuid.uuid4().hex, "aibotid": BOT, "chattype": "single", "from": {"userid": userid},
            "msgtype": "text", "text": {"content": content}}


def test_a_message_is_answered_over_the_long_connection(ws_app: Flask, sim: LongConnectionSim,
                                                        dify: DifySimulator) -> None:
    dify.script("你好", Script(answer="你好，我在长连接上回答。", delta_size=2, delay=0.05))
    wait_for(lambda: sim.live(BOT) is not None, timeout=10)
    req_id = sim.send_message(BOT, text("你好"))
    wait_for(lambda: any(a["stream"]["finish"] for a in sim.answers(req_id)), timeout=15)
    frames = sim.answers(req_id)
    assert frames[0]["stream"]["finish"] is False and frames[0]["stream"]["feedback"]["id"] == frames[0]["stream"]["id"]
    assert {f["stream"]["id"] for f in frames} == {frames[0]["stream"]["id"]}  # one stream id for every update
    contents = [f["stream"]["content"] for f in frames]
    assert contents[-1] == "你好，我在长连接上回答。" and frames[-1]["stream"]["finish"] is True
    assert all(b.startswith(a) for a, b in zip(contents, contents[1:], strict=False))  # cumulative
    assert len(frames) < 12  # updates coalesced (11 deltas over 0.6 s), not one per delta
    assert sum(f["stream"]["finish"] for f in frames) == 1
    assert len(sim.subscriptions(BOT)) == 1


def test_a_long_connection_bot_takes_no_callbacks(ws_app: Flask) -> None:
    client = ws_app.test_client()
    assert client.post("/wecom/callback?msg_signature=a&timestamp=1&nonce=2", data=b"{}").status_code == 404

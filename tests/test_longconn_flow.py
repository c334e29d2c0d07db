"""A long-connection bot end to end: subscribed by the engine, a message answered through the same handler
as callbacks, its answer pushed frame by frame under the callback's req_id until finished."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from tests.conftest import AES_KEY, TOKEN
from tests.helpers import InProcessWeCom, contents, wait_for
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message
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


def test_opening_the_chat_is_welcomed_over_the_long_connection(ws_app: Flask, sim: LongConnectionSim,
                                                               settings: Settings) -> None:
    wait_for(lambda: sim.live(BOT) is not None, timeout=10)
    started = time.monotonic()
    req_id = sim.send_event(BOT, {"msgid": uuid.uuid4().hex, "aibotid": BOT, "chattype": "single",
                                  "from": {"userid": "zhangsan"}, "msgtype": "event",
                                  "event": {"eventtype": "enter_chat"}})
    wait_for(lambda: sim.answers(req_id), timeout=5)
    assert time.monotonic() - started < 5
    assert sim.answers(req_id) == [{"msgtype": "text", "text": {"content": settings.msg_welcome}}]
    [frame] = [f for f in sim.live(BOT).frames if f.get("headers", {}).get("req_id") == req_id]  # type: ignore[union-attr]
    assert frame["cmd"] == "aibot_respond_welcome_msg"


def test_refused_credentials_fail_readiness_and_are_not_hammered(settings: Settings, redis_client: redis.Redis,
                                                                 sim: LongConnectionSim) -> None:
    app = create_app(settings.replace(wecom_transport="websocket", wecom_bot_id=BOT, wecom_ws_secret="wrong",
                                      wecom_ws_url=sim.url, ws_lease_seconds=3.0))
    other = create_app(settings.replace(wecom_transport="websocket", wecom_bot_id=BOT, wecom_ws_secret="wrong",
                                        wecom_ws_url=sim.url, ws_lease_seconds=3.0))  # another replica
    try:
        for a in (app, other):
            a.extensions["wecom_dify"].engine.start()
        wait_for(lambda: app.test_client().get("/readyz").status_code == 503, timeout=10)
        body = app.test_client().get("/readyz").get_json()
        assert body["checks"]["long_connection:default"] == "refused: check its BotID and Secret"
        time.sleep(3.5)  # a lease's length: the other replica takes it, and remembers the refusal
        assert len(sim.connections) == 1  # asked once, not hammered by either replica
        assert other.test_client().get("/readyz").status_code == 503
    finally:
        for a in (app, other):
            a.extensions["wecom_dify"].engine.drain(2)


def test_a_callback_bot_and_a_long_connection_bot_in_one_deployment(settings: Settings, redis_client: redis.Redis,
                                                                    sim: LongConnectionSim, dify: DifySimulator,
                                                                    signer: WeComSigner, tmp_path: Path) -> None:
    from config import load_bots

    bots_file = tmp_path / "bots.toml"
    bots_file.write_text(f'[bots.web]\nwecom_token = "{TOKEN}"\nwecom_encoding_aes_key = "{AES_KEY}"\n\n'
                         f'[bots.lan]\ntransport = "websocket"\nbot_id = "{BOT}"\nws_secret = "{SECRET}"\n'
                         f'ws_url = "{sim.url}"\n', encoding="utf-8")
    base = settings.replace(bots_file=str(bots_file))
    app = create_app(base, bots=load_bots(base, {}))
    app.extensions["wecom_dify"].engine.start()
    try:
        wecom = InProcessWeCom(app.test_client(), signer, path="/wecom/callback/web")
        first = wecom.send(text_message("网页"))
        assert first is not None and contents(wecom.until_finished(first["stream"]["id"]))[-1] == "echo: 网页"
        wait_for(lambda: sim.live(BOT) is not None, timeout=10)
        req_id = sim.send_message(BOT, text("内网"))
        wait_for(lambda: any(a["stream"]["finish"] for a in sim.answers(req_id)), timeout=10)
        assert sim.answers(req_id)[-1]["stream"]["content"] == "echo: 内网"
        assert {r.json["user"] for r in dify.chat_requests()} == {"wecom:web:zhangsan", "wecom:lan:zhangsan"}
    finally:
        app.extensions["wecom_dify"].engine.drain(5)


def test_an_answer_past_the_window_follows_through_the_outbox(settings: Settings, redis_client: redis.Redis,
                                                              sim: LongConnectionSim, dify: DifySimulator) -> None:
    answer = "慢" * 60
    dify.script("慢", Script(answer=answer, delta_size=3, delay=0.2))  # 4 s; the stream window is 3 s
    app = create_app(settings.replace(wecom_transport="websocket", wecom_bot_id=BOT, wecom_ws_secret=SECRET,
                                      wecom_ws_url=sim.url, ws_lease_seconds=3.0, stream_window_seconds=3.0))
    app.extensions["wecom_dify"].engine.start()
    try:
        wait_for(lambda: sim.live(BOT) is not None, timeout=10)
        req_id = sim.send_message(BOT, text("慢"))
        wait_for(lambda: any(a["stream"]["finish"] for a in sim.answers(req_id)), timeout=10)
        assert sim.answers(req_id)[-1]["stream"]["content"].endswith(settings.msg_window)

        def sent() -> list[dict[str, Any]]:
            conn = sim.live(BOT)
            return [f["body"] for f in (conn.frames if conn else []) if f.get("cmd") == "aibot_send_msg"]

        wait_for(lambda: sent(), timeout=10)
        assert sent() == [{"chatid": "zhangsan", "chat_type": 1, "msgtype": "markdown",
                           "markdown": {"content": answer}}]  # the whole answer, once
    finally:
        app.extensions["wecom_dify"].engine.drain(5)


def test_an_image_over_the_long_connection_is_read_with_its_own_key(settings: Settings, redis_client: redis.Redis,
                                                                    sim: LongConnectionSim,
                                                                    dify: DifySimulator) -> None:
    import base64

    from crypto.cipher import decode_aes_key
    from tests.media_server import MediaServer

    media = MediaServer(AES_KEY)  # encrypted with this key; the bot itself has none (a long-connection bot)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    own_key = base64.b64encode(decode_aes_key(AES_KEY)).decode()
    app = create_app(settings.replace(wecom_transport="websocket", wecom_bot_id=BOT, wecom_ws_secret=SECRET,
                                      wecom_ws_url=sim.url, ws_lease_seconds=3.0, wecom_media_hosts="127.0.0.1",
                                      wecom_encoding_aes_key=""))
    app.extensions["wecom_dify"].engine.start()
    try:
        wait_for(lambda: sim.live(BOT) is not None, timeout=10)
        body = {"msgid": uuid.uuid4().hex, "aibotid": BOT, "chattype": "single", "from": {"userid": "zhangsan"},
                "msgtype": "image", "image": {"url": media.add("p", png), "aeskey": own_key}}
        req_id = sim.send_message(BOT, body)
        wait_for(lambda: any(a["stream"]["finish"] for a in sim.answers(req_id)), timeout=10)
        assert sim.answers(req_id)[-1]["stream"]["content"] == f"echo: {settings.media_query}"
        [chat] = dify.chat_requests()
        assert [dify.uploads[f["upload_file_id"]].data for f in chat.json["files"]] == [png]
    finally:
        app.extensions["wecom_dify"].engine.drain(5)
        media.close()


def test_an_answers_images_come_as_links_over_the_long_connection(ws_app: Flask, sim: LongConnectionSim,
                                                                   dify: DifySimulator) -> None:
    from tools.dify_files import ToolFile, demo_png

    dify.script("画", Script(answer="画好了。", files=(ToolFile(demo_png(20, 10), name="p.png"),)))
    wait_for(lambda: sim.live(BOT) is not None, timeout=10)
    req_id = sim.send_message(BOT, text("画"))
    wait_for(lambda: any(a["stream"]["finish"] for a in sim.answers(req_id)), timeout=15)
    last = sim.answers(req_id)[-1]["stream"]
    assert "msg_item" not in last and last["content"].startswith("画好了。\n\n![")  # a link, not lost


def test_fixed_credentials_are_taken_again_once_the_refusal_expires(settings: Settings, redis_client: redis.Redis,
                                                                     sim: LongConnectionSim,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from services.longconn import holder

    monkeypatch.setattr(holder, "BAD_CREDENTIALS_PAUSE", 1.0)  # (60 s in production; the verdict lasts twice that)
    sim.bots[BOT] = "not-yet"  # WeCom does not know the secret yet
    app = create_app(settings.replace(wecom_transport="websocket", wecom_bot_id=BOT, wecom_ws_secret=SECRET,
                                      wecom_ws_url=sim.url, ws_lease_seconds=3.0))
    app.extensions["wecom_dify"].engine.start()
    try:
        wait_for(lambda: app.test_client().get("/readyz").status_code == 503, timeout=10)
        sim.bots[BOT] = SECRET  # fixed in the admin console
        wait_for(lambda: sim.live(BOT) is not None, timeout=15)  # the refusal expired: it subscribes again
        wait_for(lambda: app.test_client().get("/readyz").status_code == 200, timeout=10)
    finally:
        app.extensions["wecom_dify"].engine.drain(2)


def test_suggested_questions_come_with_the_last_frame_over_the_long_connection(
        ws_app: Flask, sim: LongConnectionSim, dify: DifySimulator) -> None:
    dify.suggestions = ["还有什么？"]
    wait_for(lambda: sim.live(BOT) is not None, timeout=10)
    req_id = sim.send_message(BOT, text("问"))
    wait_for(lambda: any(a["stream"]["finish"] for a in sim.answers(req_id)), timeout=15)
    last = sim.answers(req_id)[-1]
    assert last["msgtype"] == "stream_with_template_card"
    assert [b["text"] for b in last["template_card"]["button_list"]] == ["还有什么？"]

"""Issue 5 paths in-process: window, overflow, Dify failures, /stop, orphaned streams, Redis down."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from services.streams.keys import Keys
from tests.helpers import InProcessWeCom, assert_prefix_chain, contents, wait_for
from tests.response_server import ResponseServer
from tests.servers import RedisServer
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message

LIMIT = 20480




@pytest.fixture
def make_app(settings: Settings, redis_client: redis.Redis) -> Iterator:  # type: ignore[type-arg]
    apps: list[Flask] = []

    def build(**changes: object) -> Flask:
        app = create_app(settings.replace(**{"wecom_response_url_hosts": "127.0.0.1", **changes}))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["wecom_dify"].engine.drain(5)


def wecom_for(app: Flask, signer: WeComSigner) -> InProcessWeCom:
    return InProcessWeCom(app.test_client(), signer)


def test_window_closes_the_stream_and_the_answer_follows_once(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                              dify: DifySimulator, responses: ResponseServer,
                                                              settings: Settings) -> None:
    answer = "慢慢生成的完整回答。" * 20
    dify.script("slow", Script(answer=answer, delta_size=5, delay=0.15))  # ~6 s
    wecom = wecom_for(make_app(stream_window_seconds=3.0), signer)
    first = wecom.send(text_message("slow", response_url=responses.url()))
    assert first is not None
    started = time.monotonic()
    frames = wecom.until_finished(first["stream"]["id"], interval=0.2)
    assert time.monotonic() - started < 4.0
    final = frames[-1]["stream"]["content"]
    assert final.endswith(settings.msg_window) and answer.startswith(final[: -len(settings.msg_window)].rstrip())
    wait_for(lambda: responses.contents())
    time.sleep(0.5)
    assert responses.contents() == [answer]
    assert responses.received[0]["msgtype"] == "markdown"
    assert responses.content_types[0].startswith("application/json")
    assert wecom.poll(first["stream"]["id"])["stream"]["content"] == final  # fixed from then on


def test_overflow_shows_first_part_and_sends_the_rest(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                      dify: DifySimulator, responses: ResponseServer,
                                                      settings: Settings) -> None:
    answer = "".join(f"第{i}段：企业微信长回答测试。" for i in range(1400))
    assert len(answer.encode()) > 50_000
    dify.script("long", Script(answer=answer, delta_size=400, delay=0.002))
    wecom = wecom_for(make_app(), signer)
    first = wecom.send(text_message("long", response_url=responses.url()))
    assert first is not None
    frames = wecom.until_finished(first["stream"]["id"], interval=0.05)
    for frame in frames:
        assert len(frame["stream"]["content"].encode("utf-8")) <= LIMIT
    final = frames[-1]["stream"]["content"]
    assert final.endswith(settings.msg_overflow)
    shown = final[: -len(settings.msg_overflow)].rstrip("\n")
    assert answer.startswith(shown) and len(shown.encode()) > LIMIT - 1024
    wait_for(lambda: responses.contents())
    time.sleep(0.3)
    [rest] = responses.contents()
    assert len(rest.encode()) <= LIMIT
    assert rest.endswith(settings.msg_truncated)
    body = rest[: -len(settings.msg_truncated)].rstrip("\n")
    assert answer.startswith(shown + body)  # continues exactly where the stream stopped: no overlap, no gap


def test_allowlist_refuses_other_hosts(make_app, signer: WeComSigner, dify: DifySimulator,  # type: ignore[no-untyped-def]
                                       responses: ResponseServer, settings: Settings) -> None:
    dify.script("slow", Script(answer="x" * 100, delta_size=5, delay=0.2))
    app = make_app(stream_window_seconds=3.0, wecom_response_url_hosts="qyapi.weixin.qq.com")
    wecom = wecom_for(app, signer)
    first = wecom.send(text_message("slow", response_url=responses.url()))
    assert first is not None
    final = contents(wecom.until_finished(first["stream"]["id"], interval=0.2))[-1]
    assert final.endswith(settings.msg_window_no_followup)
    time.sleep(2)
    assert responses.received == []
    delivery = app.extensions["wecom_dify"].bots["default"].delivery
    assert not delivery.allowed("https://evil.example/cgi-bin/aibot/response")
    assert not delivery.allowed("http://qyapi.weixin.qq.com/x")  # plain http only for loopback
    assert delivery.allowed("https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=1")


@pytest.mark.parametrize(("script", "changes", "message"), [
    (Script(answer="部分回答然后出错", delta_size=2, error_after=2), {}, "msg_dify_failed"),
    (Script(answer="部分回答然后断开", delta_size=2, eof_after=2), {}, "msg_dify_failed"),
    (Script(answer="部分回答然后只有心跳", delta_size=2, stall=3.0, pings_during_stall=True, ping_interval=0.2,
            eof_after=None), {"dify_idle_timeout": 1.0}, "msg_dify_timeout"),
    (Script(answer="部分回答慢慢地" * 10, delta_size=2, delay=0.1), {"dify_total_timeout": 1.0}, "msg_dify_timeout"),
    (Script(http_status=429, error_envelope_code="too_many_requests", error_envelope_message="busy"),
     {"dify_max_retries": 1}, "msg_dify_busy"),
    (Script(http_status=502, html_error=True), {"dify_max_retries": 1}, "msg_dify_failed"),
])
def test_dify_failures_keep_partial_text_and_explain(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                     dify: DifySimulator, settings: Settings, script: Script,
                                                     changes: dict[str, float], message: str) -> None:
    dify.script("q", script)
    wecom = wecom_for(make_app(**changes), signer)
    first = wecom.send(text_message("q"))
    assert first is not None
    frames = wecom.until_finished(first["stream"]["id"], interval=0.1)
    final = contents(frames)[-1]
    note = getattr(settings, message)
    assert final.endswith(note)
    partial = final[: -len(note)].rstrip("\n")
    if script.http_status == 200:
        assert partial and (script.answer.startswith(partial))
    else:
        assert partial == ""
    assert_prefix_chain(frames[:-1])


@pytest.mark.parametrize("command", ["/stop", "停止"])
def test_stop_command_ends_the_running_answer(make_app, signer: WeComSigner, dify: DifySimulator,  # type: ignore[no-untyped-def]
                                              settings: Settings, command: str) -> None:
    dify.script("long", Script(answer="一直说下去。" * 200, delta_size=2, delay=0.02))
    wecom = wecom_for(make_app(), signer)
    first = wecom.send(text_message("long", userid="stopper"))
    assert first is not None
    sid = first["stream"]["id"]
    wait_for(lambda: wecom.poll(sid)["stream"]["content"] != "")
    ack = wecom.send(text_message(command, userid="stopper"))
    assert ack is not None and ack["stream"] == {"id": ack["stream"]["id"], "finish": True,
                                                 "content": settings.msg_stop_ack}
    final = wecom.poll(sid)["stream"]
    assert final["finish"] is True and final["content"].endswith(settings.msg_stopped)
    wait_for(lambda: dify.stop_requests())
    [stop] = dify.stop_requests()
    [chat] = dify.chat_requests()
    assert stop.json == {"user": chat.json["user"]}
    assert stop.path.endswith("/stop") and "/chat-messages/" in stop.path
    time.sleep(0.3)
    assert wecom.poll(sid)["stream"]["content"] == final["content"]  # nothing more is added


def test_stop_with_nothing_running(make_app, signer: WeComSigner, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    ack = wecom_for(make_app(), signer).send(text_message("/stop", userid="idle"))
    assert ack is not None and ack["stream"]["content"] == settings.msg_nothing_to_stop


def test_orphaned_stream_is_interrupted_once(make_app, signer: WeComSigner, redis_client: redis.Redis,  # type: ignore[no-untyped-def]
                                             settings: Settings) -> None:
    app = make_app()
    store = app.extensions["wecom_dify"].bots["default"].store
    created, sid, _ = store.claim("orphan-msg", "a" * 32, "dead-producer", {"followup": "0"})
    assert created
    store.set_status(sid, "running")
    store.write(sid, 1, "半截回答")
    wecom = wecom_for(app, signer)
    assert wecom.poll(sid)["stream"] == {"id": sid, "finish": False, "content": "半截回答"}
    redis_client.delete(Keys(settings.redis_key_prefix).stream_owner(sid))  # the lease lapses
    expected = "半截回答\n\n" + settings.msg_interrupted
    assert wecom.poll(sid)["stream"] == {"id": sid, "finish": True, "content": expected}
    assert redis_client.hget(Keys(settings.redis_key_prefix).stream_meta(sid), "status") == b"interrupted"
    assert wecom.poll(sid)["stream"] == {"id": sid, "finish": True, "content": expected}  # once


def test_redis_down_gets_a_terminal_busy_frame_fast(settings: Settings, signer: WeComSigner,
                                                    redis_server: RedisServer, dify: DifySimulator) -> None:
    app = create_app(settings.replace(redis_url=redis_server.url))
    wecom = wecom_for(app, signer)
    first = wecom.send(text_message("hello"))
    assert first is not None
    sid = first["stream"]["id"]
    redis_server.stop()
    for payload in (text_message("while down"), None):
        started = time.monotonic()
        reply = wecom.send(payload) if payload else wecom.poll(sid)
        assert time.monotonic() - started < 1.0
        assert reply is not None and reply["stream"]["finish"] is True
        assert reply["stream"]["content"] == settings.msg_busy
    redis_server.start()  # empty: the old stream is gone
    assert wecom.poll(sid)["stream"] == {"id": sid, "finish": True, "content": settings.msg_expired}
    again = wecom.send(text_message("after"))
    assert again is not None
    assert contents(wecom.until_finished(again["stream"]["id"]))[-1] == "echo: after"
    app.extensions["wecom_dify"].engine.drain(5)


def test_an_answer_whose_last_write_a_failover_lost_is_written_whole_before_it_ends(
        make_app, signer: WeComSigner, dify: DifySimulator, settings: Settings,  # type: ignore[no-untyped-def]
        redis_client: redis.Redis) -> None:
    answer = "故障切换丢掉了最后几次写入。" * 10
    dify.script("lost tail", Script(answer=answer, delta_size=20, delay=0.05, stall=1.5))
    wecom = wecom_for(make_app(), signer)
    first = wecom.send(text_message("lost tail"))
    assert first is not None
    sid, keys = first["stream"]["id"], Keys(settings.redis_key_prefix)
    wait_for(lambda: redis_client.get(keys.stream_text(sid)) == answer.encode())  # every delta written
    seq = int(redis_client.hget(keys.stream_meta(sid), "seq") or 0)
    assert seq >= 2
    # the promoted replica never got the last write: one write fewer, and its text
    redis_client.hset(keys.stream_meta(sid), "seq", seq - 1)
    redis_client.set(keys.stream_text(sid), answer[:-20], keepttl=True)
    frames = wecom.until_finished(sid, interval=0.1)
    assert frames[-1]["stream"]["content"] == answer  # not the shorter text, and nothing doubled

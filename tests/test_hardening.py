"""Second-review findings: leases, drain, follow-ups, hung Redis, races; each test can fail."""

from __future__ import annotations

import signal
import threading
import time

import redis
from flask import Flask

from app import create_app
from config import Settings
from services.delivery import ResponseURL, send_rest
from services.engine.answer import SEEN_GRACE
from services.streams.keys import Keys
from services.streams.store import StreamStore
from tests.helpers import InProcessWeCom, contents, wait_for
from tests.response_server import ResponseServer
from tests.servers import RedisServer, free_port
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message


def build(apps: list[Flask], settings: Settings, **changes: object) -> Flask:
    app = create_app(settings.replace(**{"wecom_response_url_hosts": "127.0.0.1", **changes}))
    apps.append(app)
    return app


def test_answer_longer_than_its_leases_finishes_intact(apps: list[Flask], settings: Settings,
                                                       signer: WeComSigner, dify: DifySimulator,
                                                       redis_client: redis.Redis) -> None:
    answer = "租约续期测试。" * 40  # ~6 s, three times the 2 s owner lease its ticket depends on
    dify.script("long", Script(answer=answer, delta_size=4, delay=0.1))
    dify.script("next", Script(answer="next"))
    wecom = InProcessWeCom(build(apps, settings, producer_lease_seconds=2.0).test_client(), signer)
    first = wecom.send(text_message("long", userid="lease"))
    second = wecom.send(text_message("next", userid="lease"))
    assert first and second
    assert contents(wecom.until_finished(first["stream"]["id"], interval=0.5))[-1] == answer
    assert contents(wecom.until_finished(second["stream"]["id"]))[-1] == "next"
    long_req, next_req = dify.chat_requests()
    assert next_req.time >= long_req.time + 5  # the ticket held: the second ran after the first ended


def test_orphan_is_recorded_as_interrupted(apps: list[Flask], settings: Settings, signer: WeComSigner,
                                           redis_client: redis.Redis) -> None:
    app = build(apps, settings)
    store: StreamStore = app.extensions["wecom_dify"].bots["default"].store
    store.claim("orphan", "b" * 32, "gone", {})
    redis_client.delete(store.keys.stream_owner("b" * 32))
    InProcessWeCom(app.test_client(), signer).poll("b" * 32)
    assert redis_client.hget(store.keys.stream_meta("b" * 32), "status") == b"interrupted"


def test_stop_releases_its_pool_slot_and_finished_answers_are_not_stopped(
        apps: list[Flask], settings: Settings, signer: WeComSigner, dify: DifySimulator) -> None:
    app = build(apps, settings)
    wecom = InProcessWeCom(app.test_client(), signer)
    dify.script("talk", Script(answer="说" * 300, delta_size=2, delay=0.02))
    first = wecom.send(text_message("talk", userid="s"))
    assert first is not None
    wait_for(lambda: wecom.poll(first["stream"]["id"])["stream"]["content"] != "")
    wecom.send(text_message("/stop", userid="s"))
    engine = app.extensions["wecom_dify"].engine
    wait_for(lambda: engine.admitted == 0)
    again = wecom.send(text_message("/stop", userid="s"))  # the stopped answer is over: nothing runs
    assert again is not None and again["stream"]["content"] == settings.msg_nothing_to_stop


def test_finish_waits_out_a_redis_stall(apps: list[Flask], settings: Settings, signer: WeComSigner,
                                        redis_server: RedisServer, dify: DifySimulator) -> None:
    dify.script("stall", Script(answer="停顿之后完整的回答", delta_size=3, stall=1.0))
    wecom = InProcessWeCom(build(apps, settings, redis_url=redis_server.url).test_client(), signer)
    first = wecom.send(text_message("stall"))
    assert first is not None
    time.sleep(0.5)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # Dify finishes while Redis does not answer
    time.sleep(2.0)
    redis_server.proc.send_signal(signal.SIGCONT)
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == "停顿之后完整的回答"


def test_hung_redis_still_answers_within_a_second(apps: list[Flask], settings: Settings, signer: WeComSigner,
                                                  redis_server: RedisServer) -> None:
    wecom = InProcessWeCom(build(apps, settings, redis_url=redis_server.url).test_client(), signer)
    assert wecom.poll("d" * 32)["stream"]["finish"] is True  # warm the pool
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        for payload in (text_message("hung"), None):
            started = time.monotonic()
            reply = wecom.send(payload) if payload else wecom.poll("d" * 32)
            assert time.monotonic() - started < 1.0
            assert reply is not None and reply["stream"]["content"] == settings.msg_busy
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)


def test_parked_message_survives_a_redis_stall(apps: list[Flask], settings: Settings, signer: WeComSigner,
                                               redis_server: RedisServer, dify: DifySimulator) -> None:
    dify.script("first", Script(answer="一" * 40, delta_size=2, delay=0.05))  # ~1 s
    dify.script("second", Script(answer="二"))
    wecom = InProcessWeCom(build(apps, settings, redis_url=redis_server.url).test_client(), signer)
    a = wecom.send(text_message("first", userid="p"))
    b = wecom.send(text_message("second", userid="p"))
    assert a and b
    time.sleep(0.3)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    redis_server.proc.send_signal(signal.SIGCONT)
    assert contents(wecom.until_finished(b["stream"]["id"]))[-1] == "二"


def test_drain_interrupts_parked_jobs_and_follows_up_closed_streams(
        apps: list[Flask], settings: Settings, signer: WeComSigner, dify: DifySimulator,
        responses: ResponseServer) -> None:
    dify.script("slow", Script(answer="慢" * 200, delta_size=2, delay=0.05))  # ~5 s
    app = build(apps, settings, stream_window_seconds=3.0)
    wecom = InProcessWeCom(app.test_client(), signer)
    a = wecom.send(text_message("slow", userid="d", response_url=responses.url()))
    b = wecom.send(text_message("parked", userid="d"))  # right behind it: a was first in the queue at its claim
    assert a and b
    time.sleep(3.2)
    closed = wecom.poll(a["stream"]["id"])["stream"]
    assert closed["finish"] and closed["content"].endswith(settings.msg_window)
    app.extensions["wecom_dify"].engine.drain(0.1)
    parked = wecom.poll(b["stream"]["id"])["stream"]
    assert parked == {"id": b["stream"]["id"], "finish": True, "content": settings.msg_interrupted}
    wait_for(lambda: responses.contents())
    [rest] = responses.contents()  # the promised follow-up comes, saying it was interrupted
    assert rest.startswith("慢") and rest.endswith(settings.msg_interrupted)


def answer_through_a_redis_pause(apps: list[Flask], settings: Settings, signer: WeComSigner,
                                 redis_server: RedisServer, dify: DifySimulator, responses: ResponseServer,
                                 answer: str) -> tuple[InProcessWeCom, str]:
    """Start ``answer`` (about 2 s) with a follow-up URL; Redis stops answering for 1.2 s meanwhile."""
    dify.script("blip", Script(answer=answer, delta_size=5, delay=0.05))
    wecom = InProcessWeCom(build(apps, settings, redis_url=redis_server.url).test_client(), signer)
    first = wecom.send(text_message("blip", response_url=responses.url()))
    assert first is not None
    time.sleep(0.3)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # a poll now would end the stream "busy"
    time.sleep(1.2)
    redis_server.proc.send_signal(signal.SIGCONT)
    return wecom, first["stream"]["id"]


def test_follow_up_after_redis_trouble_sends_the_whole_answer_once(
        apps: list[Flask], settings: Settings, signer: WeComSigner, redis_server: RedisServer,
        dify: DifySimulator, responses: ResponseServer) -> None:
    answer = "故障期间的回答" * 20
    answer_through_a_redis_pause(apps, settings, signer, redis_server, dify, responses, answer)  # no poll comes
    wait_for(lambda: responses.contents())
    time.sleep(0.5)
    assert responses.contents() == [answer]


def test_follow_up_after_redis_trouble_is_not_sent_when_polls_showed_the_answer(
        apps: list[Flask], settings: Settings, signer: WeComSigner, redis_server: RedisServer,
        dify: DifySimulator, responses: ResponseServer) -> None:
    answer = "故障之后照常显示的回答" * 20
    wecom, sid = answer_through_a_redis_pause(apps, settings, signer, redis_server, dify, responses, answer)
    assert contents(wecom.until_finished(sid))[-1] == answer  # polls resumed: the user saw it all
    time.sleep(SEEN_GRACE + 1.0)
    assert responses.contents() == []  # so it is not sent a second time


def test_response_url_is_used_once(apps: list[Flask], settings: Settings, responses: ResponseServer,
                                   redis_client: redis.Redis) -> None:
    app = build(apps, settings)
    bridge = app.extensions["wecom_dify"]
    store: StreamStore = bridge.bots["default"].store
    store.claim("once", "e" * 32, "me", {"followup": "1"})
    store.write("e" * 32, 1, "全部回答")
    store.close("e" * 32, "window", "部分", 1)
    store.set_status("e" * 32, "done")
    for _ in range(3):
        send_rest(store, bridge.bots["default"].delivery, "e" * 32, responses.url(), "", settings)
    assert responses.contents() == ["全部回答"]


def test_response_url_retries_connection_failures_then_counts_them() -> None:
    from services import metrics

    sleeps: list[float] = []
    delivery = ResponseURL(["127.0.0.1"], timeout=1, retries=2, sleep=sleeps.append)
    before = metrics.RESPONSE_URL.labels("default", "failed")._value.get()
    assert not delivery.send(f"http://127.0.0.1:{free_port()}/x", "hi", "")
    assert sleeps == [0.5, 1.0]
    assert metrics.RESPONSE_URL.labels("default", "failed")._value.get() == before + 1


def test_close_script_semantics(redis_client: redis.Redis) -> None:
    store = StreamStore(redis_client, Keys("t:"))
    store.claim("m", "s", "owner", {})
    first = store.close("s", "window", "first", 1)
    assert first is not None and first.final == "first"
    second = store.close("s", "overflow", "second", 2)
    assert second is not None and (second.final, second.reason) == ("first", "window")  # first wins
    store.claim("m2", "f", "owner", {})
    store.set_status("f", "done")
    assert store.close("f", "window", "late", 1) is None  # a poll never closes a finished answer
    assert store.close("f", "overflow", "rest", 1, finished_ok=True) is not None
    assert store.close("gone", "window", "x", 1) is None
    assert not redis_client.exists(store.keys.stream_meta("gone"))  # and never recreates one


def test_interrupt_script_spares_a_live_owner(redis_client: redis.Redis) -> None:
    store = StreamStore(redis_client, Keys("t:"))
    store.claim("m", "s", "owner", {})
    assert not store.interrupt_orphan("s", "note")  # the owner's lease exists
    redis_client.delete(store.keys.stream_owner("s"))
    assert store.interrupt_orphan("s", "note")
    assert not store.interrupt_orphan("s", "note")  # once


def test_sigterm_hook_fails_readyz_and_refuses_work(apps: list[Flask], settings: Settings,
                                                    signer: WeComSigner) -> None:
    import os
    import runpy
    from pathlib import Path

    os.environ.update({"WECOM_TOKEN": settings.wecom_token, "WECOM_ENCODING_AES_KEY": settings.wecom_encoding_aes_key,
                       "DIFY_BASE_URL": settings.dify_base_url, "DIFY_API_KEY": settings.dify_api_key})
    conf = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
    app = build(apps, settings)
    called: list[int] = []

    class Worker:
        wsgi = app

        def handle_exit(self, sig: int, frame: object) -> None:
            called.append(sig)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        conf["post_worker_init"](Worker())
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert called == [signal.SIGTERM]  # gunicorn's own handling still runs
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    reply = InProcessWeCom(client, signer).send(text_message("during shutdown"))
    assert reply is not None and reply["stream"] == {"id": reply["stream"]["id"], "finish": True,
                                                     "content": settings.msg_busy}


def test_single_flight_lock_outlives_a_slow_refresh(redis_client: redis.Redis) -> None:
    from services.user_auth import Authenticator

    store = StreamStore(redis_client, Keys("t:"))
    auth = Authenticator(store, None, None, token_ttl=60, negative_ttl=60, refresh_budget=23.0)  # type: ignore[arg-type]
    assert auth.lock_ms >= 23_000 and auth.wait_seconds > 23


def test_threads_do_not_grow_with_answers(apps: list[Flask], settings: Settings, signer: WeComSigner,
                                          dify: DifySimulator) -> None:
    wecom = InProcessWeCom(build(apps, settings).test_client(), signer)
    dify.script("slow", Script(answer="慢慢来" * 10, delta_size=3, delay=0.1))  # ~1 s each

    def engine_threads_while(answers: int) -> list[threading.Thread]:
        replies = [wecom.send(text_message("slow", userid=f"t{answers}-{i}")) for i in range(answers)]
        time.sleep(0.5)  # all of them are streaming now
        threads = [t for t in threading.enumerate() if t.name.startswith("engine")]
        for reply in replies:
            assert reply is not None
            assert contents(wecom.until_finished(reply["stream"]["id"]))[-1] == "慢慢来" * 10
        return threads

    few, many = engine_threads_while(4), engine_threads_while(80)
    assert [t.name for t in many if t.name == "engine-loop"] == ["engine-loop"]  # one loop drives them all
    assert len(many) == 1 + 8 + 8 + 1, [t.name for t in many]  # the loop, two executors and the keeper
    assert sorted(t.name for t in many) == sorted(t.name for t in few)  # nothing per answer
    assert all(t.daemon for t in many if t.name == "engine-loop")  # a worker's exit never waits for Dify


def test_send_rest_sends_nothing_twice_and_nothing_for_an_interrupted_stream(
        apps: list[Flask], settings: Settings, responses: ResponseServer, redis_client: redis.Redis) -> None:
    bridge = build(apps, settings).extensions["wecom_dify"]
    store: StreamStore = bridge.bots["default"].store
    store.claim("busy-seen", "a" * 32, "me", {"followup": "1"})
    store.write("a" * 32, 1, "完整回答")
    store.set_status("a" * 32, "done")
    store.set_fields("a" * 32, {"busy": "1", "seen": "1"})  # answered busy once, then a poll showed it all
    send_rest(store, bridge.bots["default"].delivery, "a" * 32, responses.url(), "", settings)
    store.claim("interrupted", "b" * 32, "me", {"followup": "1"})
    store.write("b" * 32, 1, "一半")
    store.set_status("b" * 32, "interrupted", settings.msg_interrupted)  # its last frame says so
    send_rest(store, bridge.bots["default"].delivery, "b" * 32, responses.url(), settings.msg_interrupted, settings)
    assert responses.contents() == []


def test_drain_interrupts_a_waiting_message_instead_of_running_it(
        apps: list[Flask], settings: Settings, signer: WeComSigner, dify: DifySimulator) -> None:
    dify.script("first", Script(answer="第一条", stall=1.0))
    app = build(apps, settings)
    wecom = InProcessWeCom(app.test_client(), signer)
    a = wecom.send(text_message("first", userid="w"))
    b = wecom.send(text_message("second", userid="w"))  # waits for a's turn
    assert a and b
    time.sleep(0.3)
    app.extensions["wecom_dify"].engine.drain(20)  # a has time to finish; b must not start
    assert wecom.poll(a["stream"]["id"])["stream"]["content"] == "第一条"
    assert wecom.poll(b["stream"]["id"])["stream"] == {"id": b["stream"]["id"], "finish": True,
                                                      "content": settings.msg_interrupted}
    assert [r.json["query"] for r in dify.chat_requests()] == ["first"]

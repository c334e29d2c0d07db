"""POST /wecom/callback end to end in-process: real Redis, the Dify simulator over HTTP."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app import create_app
from config import Settings
from services.streams.keys import Keys
from tests.helpers import InProcessWeCom, assert_prefix_chain, contents, wait_for
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, stream_refresh, text_message

LONG = "企业微信 streaming 🤖 — " * 40


@pytest.fixture
def wecom(client: FlaskClient, signer: WeComSigner) -> InProcessWeCom:
    return InProcessWeCom(client, signer)


def test_text_message_streams_the_dify_answer(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("介绍一下你自己", Script(answer=LONG, delta_size=3, delay=0.002))
    first = wecom.send(text_message("介绍一下你自己", userid="zhangsan"))
    assert first is not None
    assert first["msgtype"] == "stream"
    assert first["stream"]["finish"] is False and first["stream"]["content"] == ""
    frames = wecom.until_finished(first["stream"]["id"])
    assert contents(frames)[-1] == LONG
    assert_prefix_chain([first, *frames])
    [req] = dify.chat_requests()
    assert req.json["query"] == "介绍一下你自己"
    assert req.json["user"] == "wecom:zhangsan"
    assert req.json["response_mode"] == "streaming"
    assert req.headers["authorization"] == "Bearer app-test-key"


def test_redelivery_returns_same_stream_and_calls_dify_once(wecom: InProcessWeCom,
                                                            dify: DifySimulator) -> None:
    dify.script("q", Script(answer="answer", delay=0.05))
    payload = text_message("q", msgid="dup-1")
    first = wecom.send(payload)
    again = wecom.send(payload)
    assert first is not None and again is not None
    assert again["stream"]["id"] == first["stream"]["id"]
    wecom.until_finished(first["stream"]["id"])
    final = wecom.send(payload)
    assert final is not None and final["stream"]["finish"] and final["stream"]["content"] == "answer"
    assert len(dify.chat_requests()) == 1


def test_concurrent_duplicate_deliveries_make_one_dify_call(app: Flask, signer: WeComSigner,
                                                            dify: DifySimulator) -> None:
    dify.script("same", Script(answer="once", delay=0.02))
    payload = text_message("same", msgid="dup-concurrent")
    sids: list[str] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        reply = InProcessWeCom(app.test_client(), signer).send(payload)
        assert reply is not None
        sids.append(reply["stream"]["id"])

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(sids)) == 1 and len(sids) == 8
    InProcessWeCom(app.test_client(), signer).until_finished(sids[0])
    assert len(dify.chat_requests()) == 1


def test_unknown_stream_gets_a_terminal_frame(wecom: InProcessWeCom, settings: Settings) -> None:
    frame = wecom.poll("no-such-stream")
    assert frame["stream"] == {"id": "no-such-stream", "finish": True, "content": settings.msg_expired}
    well_formed = "0" * 32  # shaped like ours, so it is looked up in Redis
    assert wecom.poll(well_formed)["stream"] == {"id": well_formed, "finish": True,
                                                 "content": settings.msg_expired}


def test_opening_the_chat_gets_the_welcome_text(wecom: InProcessWeCom, settings: Settings,
                                               dify: DifySimulator) -> None:
    event = {"msgid": "e1", "msgtype": "event", "event": {"eventtype": "enter_chat"}, "from": {"userid": "u"}}
    assert wecom.send(event) == {"msgtype": "text", "text": {"content": settings.msg_welcome}}  # Dify has no opening
    assert [r.path for r in dify.requests] == ["/v1/parameters"]


def test_no_welcome_text_means_no_welcome(settings: Settings, signer: WeComSigner, apps: list[Flask]) -> None:
    apps.append(app := create_app(settings.replace(msg_welcome="")))
    event = {"msgid": "e2", "msgtype": "event", "event": {"eventtype": "enter_chat"}, "from": {"userid": "u"}}
    assert InProcessWeCom(app.test_client(), signer).send(event) is None


@pytest.mark.parametrize("payload", [
    {"msgid": "f1", "msgtype": "event", "event": {"eventtype": "feedback_event", "feedback_event": {"id": "x"}},
     "from": {"userid": "u"}},
    {"msgid": "x1", "msgtype": "no-such-type"},
    {"msgid": "i1", "msgtype": "image", "image": {"url": "https://x"}},
    {"msgtype": "text", "text": {"content": "no msgid"}, "from": {"userid": "u"}},
    {"msgid": "s0", "msgtype": "stream", "stream": {}},
])
def test_other_callbacks_get_an_empty_reply(wecom: InProcessWeCom, dify: DifySimulator,
                                            payload: dict[str, object]) -> None:
    assert wecom.send(payload) is None
    assert dify.chat_requests() == []


@pytest.mark.parametrize("plaintext", ["not json", "[1, 2]", "null", '"text"'])
def test_plaintext_that_is_not_a_json_object_is_400(client: FlaskClient, signer: WeComSigner,
                                                    plaintext: str) -> None:
    req = signer.callback(plaintext)
    resp = client.post("/wecom/callback?" + req.query_string, data=req.body)
    assert resp.status_code == 400


def test_forged_callback_is_403_and_starts_nothing(client: FlaskClient, dify: DifySimulator) -> None:
    forger = WeComSigner("WrongToken123", "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt")
    req = forger.callback(text_message("hi"))
    resp = client.post("/wecom/callback?" + req.query_string, data=req.body)
    assert resp.status_code == 403
    time.sleep(0.1)
    assert dify.chat_requests() == []


def test_group_mention_is_stripped(settings: Settings, redis_client: redis.Redis, signer: WeComSigner,
                                   dify: DifySimulator) -> None:
    app = create_app(settings.replace(wecom_bot_names="项目助手, My Bot"))
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("@My Bot /help me@example.com", chattype="group", chatid="c1"))
    assert first is not None
    wecom.until_finished(first["stream"]["id"])
    assert dify.chat_requests()[0].json["query"] == "/help me@example.com"
    app.extensions["wecom_dify"].engine.drain(5)


def test_conversation_is_kept_per_user_and_expires_when_idle(wecom: InProcessWeCom, dify: DifySimulator,
                                                             redis_client: redis.Redis,
                                                             settings: Settings) -> None:
    def ask(text: str, user: str) -> None:
        first = wecom.send(text_message(text, userid=user))
        assert first is not None
        wecom.until_finished(first["stream"]["id"])

    ask("one", "alice")
    ask("two", "alice")
    ask("three", "bob")
    reqs = dify.chat_requests()
    assert "conversation_id" not in reqs[0].json
    conv = reqs[1].json["conversation_id"]
    assert conv
    assert "conversation_id" not in reqs[2].json  # bob has his own
    key = Keys(settings.redis_key_prefix).conversation("u:alice")
    assert 0 < redis_client.ttl(key) <= settings.conversation_idle_seconds
    redis_client.delete(key)  # what the idle expiry does
    ask("four", "alice")
    assert "conversation_id" not in dify.chat_requests()[3].json


def test_group_scope_chat_shares_one_conversation(settings: Settings, redis_client: redis.Redis,
                                                  signer: WeComSigner, dify: DifySimulator) -> None:
    app = create_app(settings.replace(conversation_scope="chat"))
    wecom = InProcessWeCom(app.test_client(), signer)
    for user in ("alice", "bob"):
        first = wecom.send(text_message("hi", userid=user, chattype="group", chatid="room"))
        assert first is not None
        wecom.until_finished(first["stream"]["id"])
    a, b = dify.chat_requests()
    assert a.json["user"] == b.json["user"] == "wecom-group:room"
    assert b.json["conversation_id"]
    app.extensions["wecom_dify"].engine.drain(5)


def test_stale_conversation_is_dropped_and_retried(wecom: InProcessWeCom, dify: DifySimulator,
                                                   redis_client: redis.Redis, settings: Settings) -> None:
    key = Keys(settings.redis_key_prefix).conversation("u:carol")
    redis_client.set(key, "6f1c1c3e-0000-4000-8000-000000000000", ex=100)
    first = wecom.send(text_message("hello", userid="carol"))
    assert first is not None
    frames = wecom.until_finished(first["stream"]["id"])
    assert contents(frames)[-1] == "echo: hello"
    stale, fresh = dify.chat_requests()
    assert stale.json["conversation_id"] and "conversation_id" not in fresh.json
    assert redis_client.get(key) not in (None, b"6f1c1c3e-0000-4000-8000-000000000000")


def test_same_conversation_is_serialized(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("slow", Script(answer="slow answer", delay=0.1))
    dify.script("next", Script(answer="next answer"))
    a = wecom.send(text_message("slow", userid="dave"))
    time.sleep(0.05)
    b = wecom.send(text_message("next", userid="dave"))
    assert a is not None and b is not None
    time.sleep(0.2)
    waiting = wecom.poll(b["stream"]["id"])
    assert waiting["stream"]["finish"] is False
    assert "上一条" in waiting["stream"]["content"]
    wecom.until_finished(a["stream"]["id"])
    assert contents(wecom.until_finished(b["stream"]["id"]))[-1] == "next answer"
    first, second = dify.chat_requests()
    assert first.json["query"] == "slow" and second.json["query"] == "next"
    assert second.json["conversation_id"]  # it ran after the first one stored the conversation


def test_dify_error_keeps_partial_text_and_explains(wecom: InProcessWeCom, dify: DifySimulator,
                                                    settings: Settings) -> None:
    dify.script("boom", Script(answer="部分回答然后出错", delta_size=2, error_after=2))
    first = wecom.send(text_message("boom"))
    assert first is not None
    last = contents(wecom.until_finished(first["stream"]["id"]))[-1]
    assert last == "部分回答\n\n" + settings.msg_dify_failed


def test_deltas_are_coalesced_before_redis(wecom: InProcessWeCom, dify: DifySimulator,
                                           redis_client: redis.Redis, settings: Settings) -> None:
    deltas = [f"{i}," for i in range(400)]
    dify.script("many", Script(deltas=deltas, delay=0.0005))
    first = wecom.send(text_message("many"))
    assert first is not None
    sid = first["stream"]["id"]
    assert contents(wecom.until_finished(sid))[-1] == "".join(deltas)
    seq = int(redis_client.hget(Keys(settings.redis_key_prefix).stream_meta(sid), "seq") or 0)
    assert 1 <= seq < len(deltas) / 4


def test_blocking_mode(settings: Settings, redis_client: redis.Redis, signer: WeComSigner,
                       dify: DifySimulator) -> None:
    app = create_app(settings.replace(dify_response_mode="blocking"))
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("blocking please"))
    assert first is not None
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == "echo: blocking please"
    assert dify.chat_requests()[0].json["response_mode"] == "blocking"
    app.extensions["wecom_dify"].engine.drain(5)


def test_callback_does_not_wait_for_dify(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("stall", Script(answer="late", stall=3.0))
    started = time.monotonic()
    first = wecom.send(text_message("stall"))
    assert time.monotonic() - started < 1.5
    assert first is not None and first["stream"]["finish"] is False


def test_full_engine_says_so_instead_of_dropping(settings: Settings, redis_client: redis.Redis,
                                                 signer: WeComSigner, dify: DifySimulator) -> None:
    app = create_app(settings.replace(engine_capacity=1, queued_note_after_seconds=0.1))
    wecom = InProcessWeCom(app.test_client(), signer)
    dify.script("hold", Script(answer="held", stall=1.0))
    a = wecom.send(text_message("hold", userid="u1"))
    b = wecom.send(text_message("rejected", userid="u2"))
    assert a and b
    assert b["stream"]["finish"] is True and b["stream"]["content"] == settings.msg_busy
    rejected = wecom.poll(b["stream"]["id"])["stream"]  # and the stream says so on every replica
    assert rejected["finish"] is True and rejected["content"] == settings.msg_busy
    assert contents(wecom.until_finished(a["stream"]["id"]))[-1] == "held"
    engine = app.extensions["wecom_dify"].engine
    wait_for(lambda: engine.admitted == 0)
    c = wecom.send(text_message("admitted again", userid="u3"))  # the slot came back
    assert c is not None
    assert contents(wecom.until_finished(c["stream"]["id"]))[-1] == "echo: admitted again"
    engine.drain(5)


def test_empty_query_after_mention_is_answered_without_dify(wecom: InProcessWeCom, dify: DifySimulator,
                                                            settings: Settings) -> None:
    first = wecom.send(text_message("   "))
    assert first is not None
    assert wecom.poll(first["stream"]["id"])["stream"]["content"] == settings.msg_empty_query
    assert dify.chat_requests() == []


def test_refresh_of_a_stream_from_a_fuzzed_id(wecom: InProcessWeCom) -> None:
    for sid in ["", "x" * 5000, "\u2028", "../../etc"]:
        reply = wecom.send(stream_refresh(sid))
        assert reply is None or reply["stream"]["finish"] is True


def test_message_replace_through_the_producer(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("moderate", Script(answer="一二三四五六", delta_size=2, replace_at=2, replace_text="[已审核]"))
    first = wecom.send(text_message("moderate"))
    assert first is not None
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == "[已审核]五六"


def test_group_scope_user_keeps_one_conversation_per_member(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    for user in ("alice", "bob", "alice"):
        first = wecom.send(text_message("@bot hi", userid=user, chattype="group", chatid="room"))
        assert first is not None
        wecom.until_finished(first["stream"]["id"])
    a1, b1, a2 = dify.chat_requests()
    assert a1.json["user"] == "wecom:alice" and b1.json["user"] == "wecom:bob"
    assert "conversation_id" not in b1.json  # bob does not inherit alice's group conversation
    assert a2.json["conversation_id"]


def test_every_key_has_a_ttl_while_an_answer_runs(wecom: InProcessWeCom, dify: DifySimulator,
                                                  redis_client: redis.Redis) -> None:
    dify.script("slow", Script(answer="x" * 60, delay=0.05))
    first = wecom.send(text_message("slow", userid="ttl"))
    assert first is not None
    time.sleep(0.5)
    keys = list(redis_client.scan_iter("*"))
    kinds = {k.decode().split(":")[1] for k in keys}
    assert {"msg", "stream", "queue", "active"} <= kinds
    for key in keys:
        assert redis_client.ttl(key) > 0, key
    wecom.until_finished(first["stream"]["id"])


def test_crashing_dify_client_still_finishes_the_stream(app: Flask, wecom: InProcessWeCom,
                                                        settings: Settings) -> None:
    class Broken:
        def chat(self, *args: object, **kwargs: object) -> object:
            raise RuntimeError("bug in a dependency")

        async def close(self) -> None:
            pass

    app.extensions["wecom_dify"].bots["default"].dify = Broken()
    first = wecom.send(text_message("anything"))
    assert first is not None
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == settings.msg_dify_failed


def test_lone_surrogate_delta_does_not_kill_the_stream(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("emoji", Script(deltas=["ok ", "\ud83e", " end"], flavour="old"))
    first = wecom.send(text_message("emoji"))
    assert first is not None
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == "ok \ufffd end"
    second = wecom.send(text_message("next"))  # the ticker survived
    assert second is not None
    assert contents(wecom.until_finished(second["stream"]["id"]))[-1] == "echo: next"


def test_claim_replayed_after_a_lost_reply_still_answers(app: Flask, wecom: InProcessWeCom,
                                                         dify: DifySimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_stream_store import LoseReplies

    app.extensions["wecom_dify"].bots["default"].store.write("warm", 1, "")  # scripts loaded: the claim goes as EVALSHA
    loser = LoseReplies(monkeypatch, "EVALSHA")
    first = wecom.send(text_message("replayed claim"))
    assert loser.lost == 1
    assert first is not None and first["stream"]["finish"] is False
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == "echo: replayed claim"
    assert len(dify.chat_requests()) == 1


@pytest.mark.parametrize("payload", [
    {"msgid": "\ud800", "msgtype": "text", "text": {"content": "x"}, "from": {"userid": "u"}},
    {"msgid": "m", "msgtype": "text", "text": {"content": "x"}, "from": {"userid": "\ud800"}},
    {"msgid": "m2", "msgtype": "stream", "stream": {"id": "\ud800"}},
    {"msgid": "m3", "msgtype": "text", "text": {"content": "x"}, "from": {"userid": "u"}, "chattype": "group",
     "chatid": "c" * 5000},
])
def test_hostile_ids_never_500(client: FlaskClient, signer: WeComSigner, payload: dict[str, object]) -> None:
    req = signer.callback(json.dumps(payload))
    assert client.post("/wecom/callback?" + req.query_string, data=req.body).status_code < 500


def test_deeply_nested_plaintext_is_400(client: FlaskClient, signer: WeComSigner) -> None:
    req = signer.callback("[" * 60000 + "]" * 60000)
    assert client.post("/wecom/callback?" + req.query_string, data=req.body).status_code == 400


json_values = st.recursive(  # empty containers are leaves: an extend that can ignore its argument is an error
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.just([]) | st.just({}),
    lambda c: st.lists(c, min_size=1, max_size=3) | st.dictionaries(st.text(max_size=8), c, min_size=1, max_size=3),
    max_leaves=8)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["msgid", "from", "text", "chatid", "chattype", "stream", "msgtype", "response_url"]),
       value=json_values, msgtype=st.sampled_from(["text", "stream"]))
def test_signed_callbacks_with_fuzzed_fields_never_500(client: FlaskClient, signer: WeComSigner, field: str,
                                                       value: object, msgtype: str) -> None:
    payload = text_message("hi")
    payload["msgtype"] = msgtype
    payload["stream"] = {"id": "0" * 32}
    payload[field] = value
    req = signer.callback(payload)
    assert client.post("/wecom/callback?" + req.query_string, data=req.body).status_code < 500


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       sig=st.text(max_size=50), ts=st.text(max_size=12), nonce=st.text(max_size=12))
def test_fuzzed_post_bodies_and_queries_never_500(client: FlaskClient, body: bytes, sig: str, ts: str,
                                                  nonce: str) -> None:
    from urllib.parse import urlencode

    resp = client.post("/wecom/callback?" + urlencode({"msg_signature": sig, "timestamp": ts, "nonce": nonce}),
                       data=body, content_type="application/json")
    assert resp.status_code < 500

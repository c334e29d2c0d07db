"""Edges of the conversation features that a mutation run found untested: caps and TTLs, claims, clicks from
elsewhere, fallbacks, the tail of progress notes, think splitting, oversized frames, probes, progress writes
that fail, and the drain waiting for background work."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from app import create_app
from config import Settings
from services.cards import clicked, keep_card
from services.dify import Progress
from services.dify.events import ChatEventDecoder
from services.dify.sse import SSEFrameTooLarge, SSEParser
from services.dify.think import ThinkSplitter
from services.engine.answer import Answers
from services.engine.progress import MAX_NOTE, ProgressView
from services.errors import DifyHTTPError, StoreUnavailable
from services.feedback import MAX_CONTENT, read_rating
from services.frames import MAX_CONTENT_BYTES, with_progress
from services.streams.keys import Keys
from services.streams.records import WriteResult
from services.streams.store import StreamStore
from services.streams.writer import StreamWriter
from tests.helpers import InProcessWeCom, contents, wait_for
from tests.response_server import ResponseServer
from tools import dify_sim
from tools.dify_sim import DifySimulator, Form, Script
from tools.wecom_client import WeComSigner, text_message


@pytest.fixture
def make_app(make_app: Any) -> Any:
    """Apps that may call loopback response_urls (the tests' stand-in for WeCom's)."""
    return lambda **changes: make_app(**{"wecom_response_url_hosts": "127.0.0.1", **changes})


def event(kind: str, body: dict[str, Any] | None = None, **msg: Any) -> dict[str, Any]:
    payload = {"msgid": uuid.uuid4().hex, "create_time": 1700000000, "aibotid": "AIBOTID", "chattype": "single",
               "from": {"userid": "zhangsan"}, "msgtype": "event", "event": {"eventtype": kind}}
    if body is not None:
        payload["event"][kind] = body
    payload.update(msg)
    return payload


def click(card: dict[str, Any], key: str, url: str, **msg: Any) -> dict[str, Any]:
    return event("template_card_event", {"card_type": "button_interaction", "event_key": key,
                                         "task_id": card["task_id"]}, response_url=url, **msg)


def suggested(dify: DifySimulator) -> list[Any]:
    return [r for r in dify.requests if r.path.endswith("/suggested")]


# --- feedback (fb4, fb5, ce6) -------------------------------------------------------------------

def test_rating_content_is_capped_and_ids_bounded() -> None:
    rating = read_rating({"feedback_event": {"id": "s1", "type": 2, "content": "长" * 3000}}, "u")
    assert rating is not None and len(rating.content) == MAX_CONTENT
    assert read_rating({"feedback_event": {"id": "x" * 257, "type": 1}}, "u") is None


def test_a_ratings_msgid_stays_claimed_for_the_stream_ttl(make_app: Any, signer: WeComSigner, settings: Settings,
                                                          redis_client: redis.Redis) -> None:
    wecom = InProcessWeCom(make_app().test_client(), signer)
    fb = event("feedback_event", {"id": "s" * 32, "type": 1})
    assert wecom.send(fb) is None
    assert redis_client.pttl(Keys(settings.redis_key_prefix).msg(fb["msgid"])) > 60_000  # re-deliveries: once


# --- welcome and cards (we3, we4, ca2, ca3, ce2, ce3) --------------------------------------------

def test_the_fallback_is_welcome_text_when_set(make_app: Any, signer: WeComSigner, dify: DifySimulator) -> None:
    dify.parameters_delay = 4.0  # past WELCOME_WAIT
    wecom = InProcessWeCom(make_app(welcome_text="欢迎使用！").test_client(), signer)
    assert wecom.send(event("enter_chat")) == {"msgtype": "text", "text": {"content": "欢迎使用！"}}


def test_a_card_that_cannot_be_kept_is_not_sent(make_app: Any, signer: WeComSigner, dify: DifySimulator) -> None:
    dify.opening_statement, dify.opening_questions = "你好", ["问题一"]
    app = make_app(redis_url="redis://127.0.0.1:1/0")  # Redis unreachable: nobody could answer its clicks
    assert InProcessWeCom(app.test_client(), signer).send(event("enter_chat")) == {
        "msgtype": "text", "text": {"content": "你好"}}


def test_a_welcome_card_is_kept_for_card_ttl(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                             settings: Settings, redis_client: redis.Redis) -> None:
    dify.opening_questions = ["怎么报销？"]
    card = InProcessWeCom(make_app().test_client(), signer).send(event("enter_chat"))["template_card"]  # type: ignore[index]
    ttl = redis_client.pttl(Keys(settings.redis_key_prefix).card(card["task_id"]))
    assert ttl > (settings.card_ttl_seconds - 60) * 1000


def test_a_forged_button_key_asks_nothing(redis_client: redis.Redis) -> None:
    store = StreamStore(redis_client, Keys("k13"))
    keep_card(store, {"task_id": "t"}, ["一", "二"], 60)
    found = clicked(store, "t", "q1")
    assert found is not None and found.question == "二"
    for forged in ("q-1", "q2", "a0"):
        assert clicked(store, "t", forged) is None


def test_a_group_click_is_asked_in_the_groups_conversation(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                           settings: Settings, responses: ResponseServer,
                                                           redis_client: redis.Redis) -> None:
    dify.suggestions = ["多久到账？"]
    wecom = InProcessWeCom(make_app().test_client(), signer)
    first = wecom.send(text_message("报销", chattype="group", chatid="CHAT1"))
    assert first is not None
    card = wecom.until_finished(first["stream"]["id"])[-1]["template_card"]
    group = redis_client.get(Keys(settings.redis_key_prefix).conversation("g:CHAT1:u:zhangsan"))
    assert group is not None
    assert wecom.send(click(card, "q0", responses.url("g"), chattype="group", chatid="CHAT1")) is not None
    wait_for(lambda: responses.contents(), timeout=10)
    assert dify.chat_requests()[-1].json.get("conversation_id") == group.decode()


def test_a_click_with_a_foreign_response_url_asks_nothing(make_app: Any, signer: WeComSigner,
                                                         dify: DifySimulator) -> None:
    dify.opening_questions = ["怎么报销？"]
    wecom = InProcessWeCom(make_app().test_client(), signer)
    card = wecom.send(event("enter_chat"))["template_card"]  # type: ignore[index]
    assert wecom.send(click(card, "q0", "http://evil.example/cgi-bin/aibot/response")) is None
    time.sleep(0.5)
    assert dify.chat_requests() == []


# --- suggestions and forms after an answer (ex2, an1, ex3, an4) ------------------------------------

def test_slow_suggestions_do_not_hold_the_last_frame(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    original = dify_sim._Handler._suggested

    def slow(self: Any, message_id: str) -> None:
        time.sleep(3)
        original(self, message_id)

    monkeypatch.setattr(dify_sim._Handler, "_suggested", slow)
    dify.suggestions = ["还有吗？"]
    wecom = InProcessWeCom(make_app(suggestions_timeout=0.5).test_client(), signer)
    first = wecom.send(text_message("hi"))
    assert first is not None
    started = time.monotonic()
    last = wecom.until_finished(first["stream"]["id"])[-1]
    assert time.monotonic() - started < 2.5 and last["msgtype"] == "stream"


def test_a_clicks_answer_asks_for_no_suggestions(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                 responses: ResponseServer) -> None:
    dify.suggestions = ["多久到账？"]
    wecom = InProcessWeCom(make_app().test_client(), signer)
    first = wecom.send(text_message("报销"))
    assert first is not None
    card = wecom.until_finished(first["stream"]["id"])[-1]["template_card"]
    assert len(suggested(dify)) == 1
    wecom.send(click(card, "q0", responses.url("s")))
    wait_for(lambda: responses.contents(), timeout=10)
    assert len(suggested(dify)) == 1  # nobody polls a click's stream: its card could never be shown


def test_a_form_in_an_answer_nobody_polls_gets_the_note(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                        settings: Settings, responses: ResponseServer) -> None:
    second = Form(title="复核", content="继续？", then={"approve": "完成。"})
    two_step = Form(content="是否发送？", then={"approve": "一级通过。"}, next={"approve": second})
    dify.script("两级", Script(answer="开始。", app="advanced-chat", form=two_step))
    wecom = InProcessWeCom(make_app().test_client(), signer)
    first = wecom.send(text_message("两级", chattype="group", chatid="CHAT1"))
    assert first is not None
    card = wecom.until_finished(first["stream"]["id"])[-1]["template_card"]
    group_click = click(card, "a0", responses.url("g"))
    group_click.update({"chattype": "group", "chatid": "CHAT1"})
    wecom.send(group_click)
    wait_for(lambda: responses.received, timeout=10)
    # a group's response_url takes no card: the text, and where to go on
    assert responses.contents() == [f"一级通过。\n\n{settings.msg_form_unsupported}"]


def test_an_expired_form_says_so(settings: Settings) -> None:
    exc = DifyHTTPError(412, "human_input_form_expired", "expired")
    assert Answers._dify_message(settings, exc) == settings.msg_form_closed


# --- progress (pv2, pv3, fr1, ev4, ev5, ev9, wr1, wr3, st3) -----------------------------------------

def view() -> ProgressView:
    return ProgressView("think", tool="工具：{name}", node="步骤：{name}", thinking="思考中", every=0.0)


def test_a_long_note_shows_its_latest_part() -> None:
    note = view().add(Progress("reasoning", "a" * 7000 + "END"))
    assert note is not None and note.endswith("END") and len(note) <= MAX_NOTE


def test_a_compacted_note_still_shows_its_latest_part() -> None:
    v = view()
    for i in range(14):  # the 13th compacts what is kept
        chunk = chr(ord("a") + i) * 1000
        note = v.add(Progress("reasoning", chunk))
        assert note is not None and note.endswith(chunk) and len(note) <= MAX_NOTE


def test_a_sliver_of_progress_is_not_shown() -> None:
    content = "x" * (MAX_CONTENT_BYTES - 2 - 10)  # 10 bytes of room: under MIN_PROGRESS
    assert with_progress(content, "正在使用工具：search", "steps") == content


def test_steps_inside_a_loop_are_not_named() -> None:
    frame = {"event": "node_started", "workflow_run_id": "w", "data": {"title": "LLM", "node_type": "llm"}}
    assert ChatEventDecoder().handle(json.dumps(frame)) == [Progress("node", "LLM")]
    frame["data"]["iteration_id"] = "it1"  # type: ignore[index]
    assert ChatEventDecoder().handle(json.dumps(frame)) == []


def test_an_agent_step_is_named_once() -> None:
    decoder = ChatEventDecoder()
    frame = json.dumps({"event": "agent_thought", "id": "t1", "tool": "search", "tool_labels": {}})
    assert decoder.handle(frame) == [Progress("tool", "search")]
    assert decoder.handle(frame) == []  # the same thought, updated


def test_blank_deltas_after_the_think_block_are_not_the_answers() -> None:
    s = ThinkSplitter()
    assert s.feed("<think>想</think>") == ("", "想")
    assert s.feed("\n") == ("", "")
    assert s.feed("\n答") == ("答", "")


def test_a_failed_progress_write_never_replaces_a_newer_note() -> None:
    w = StreamWriter(None, "s")  # type: ignore[arg-type]
    w.show_progress("old")
    taken = w.take_progress()
    w.show_progress("")  # e.g. the answer's end: the steps go
    w.keep_progress(taken)  # type: ignore[arg-type]
    assert w.take_progress() == ""


def test_a_progress_note_a_flush_failed_to_write_is_written_next_time(redis_client: redis.Redis) -> None:
    live = StreamStore(redis_client, Keys("k13"))
    sid = uuid.uuid4().hex
    live.claim("m-flush", sid, "owner", {})
    live.set_status(sid, "running")
    w = StreamWriter(StreamStore(redis.Redis(port=1), Keys("k13")), sid)  # a Redis that is not there
    w.show_progress("最后的想法")
    with pytest.raises(StoreUnavailable):
        w.flush()
    w.store = live  # Redis is back
    w.flush()
    snap = live.snapshot(sid)
    assert snap is not None and snap.meta["progress"] == "最后的想法"


def test_write_many_answers_only_for_the_writes(redis_client: redis.Redis) -> None:
    store = StreamStore(redis_client, Keys("k13"))
    sid = uuid.uuid4().hex
    store.claim("m1", sid, "owner", {})
    store.set_status(sid, "running")
    # the writes' results, then one per note: the keeper reads them apart by position
    assert store.write_many([(sid, 1, "a", False)], [(sid, "note")]) == [WriteResult.APPLIED, WriteResult.APPLIED]
    assert store.write_many([], [(sid, "note2")]) == [WriteResult.APPLIED]


# --- oversized frames (ss2) -----------------------------------------------------------------------------

def test_an_oversized_text_frame_after_a_node_frame_still_fails() -> None:
    parser = SSEParser(1024)
    data = (b'data: {"event": "node_started", "data": {}}\n\n'
            b'data: {"event": "message", "answer": "' + b"x" * 2000 + b'"}\n\n')
    with pytest.raises(SSEFrameTooLarge):
        parser.feed(data)  # never dropped as if it were progress


# --- the first-output probe (rd3, cl1, cl2) --------------------------------------------------------------

def conversation_of(redis_client: redis.Redis, settings: Settings) -> bytes | None:
    return redis_client.get(Keys(settings.redis_key_prefix).conversation("u:zhangsan"))


def ask(wecom: InProcessWeCom, text: str) -> str:
    first = wecom.send(text_message(text))
    assert first is not None
    return contents(wecom.until_finished(first["stream"]["id"]))[-1]


@pytest.mark.parametrize("answer", ["500", "cut"])
def test_a_probe_that_cannot_tell_keeps_the_conversation(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                         settings: Settings, redis_client: redis.Redis,
                                                         monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    wecom = InProcessWeCom(make_app(dify_first_output_seconds=0.5).test_client(), signer)
    assert ask(wecom, "first") == "echo: first"
    live = conversation_of(redis_client, settings)

    def probe(self: Any) -> None:
        if answer == "500":
            self._error(500, "internal_server_error", "boom")
        else:
            self.close_connection = True  # no response at all

    monkeypatch.setattr(dify_sim._Handler, "_messages", probe)
    dify.script("slow", Script(answer="想了很久", delay=1.5, leading_ping=True))
    assert ask(wecom, "slow") == "想了很久"
    assert len(dify.chat_requests()) == 2 and conversation_of(redis_client, settings) == live


def test_a_quiet_answer_is_probed_at_first_output(make_app: Any, signer: WeComSigner, dify: DifySimulator) -> None:
    wecom = InProcessWeCom(make_app(dify_first_output_seconds=1.0).test_client(), signer)
    ask(wecom, "first")
    dify.script("q", Script(answer="好的", delta_size=10, delay=1.5, leading_ping=True))  # first text at 1.5 s
    assert ask(wecom, "q") == "好的"
    assert len([r for r in dify.requests if r.path == "/v1/messages"]) == 1


# --- background work (eg2) -------------------------------------------------------------------------------

def test_the_drain_waits_for_background_work(settings: Settings, redis_client: redis.Redis) -> None:
    engine = create_app(settings).extensions["wecom_dify"].engine
    done = threading.Event()

    async def work() -> None:
        await asyncio.sleep(0.5)
        done.set()

    engine.background.run_soon(engine.bots["default"], work)
    engine.drain(5)
    assert done.is_set()

"""Dify's conversation design in WeCom: the opening statement and questions on enter_chat (within 5 s even
with Dify down), question cards whose clicks are asked in the user's conversation, and suggested
questions after an answer in its last frame."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from config import Settings
from services.streams.keys import Keys
from tests.helpers import InProcessWeCom, contents, wait_for
from tests.response_server import ResponseServer
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message


@pytest.fixture
def make_app(make_app: Any) -> Any:
    """Apps that may call loopback response_urls (the tests' stand-in for WeCom's)."""
    return lambda **changes: make_app(**{"wecom_response_url_hosts": "127.0.0.1", **changes})


def enter_chat(userid: str = "zhangsan") -> dict[str, Any]:
    return {"msgid": uuid.uuid4().hex, "create_time": 1700000000, "aibotid": "AIBOTID", "chattype": "single",
            "from": {"userid": userid}, "msgtype": "event", "event": {"eventtype": "enter_chat"}}


def card_click(card: dict[str, Any], key: str, response_url: str, msgid: str | None = None) -> dict[str, Any]:
    return {"msgid": msgid or uuid.uuid4().hex, "create_time": 1700000000, "aibotid": "AIBOTID",
            "chattype": "single", "from": {"userid": "zhangsan"}, "response_url": response_url,
            "msgtype": "event", "event": {"eventtype": "template_card_event", "template_card_event": {
                "card_type": "button_interaction", "event_key": key, "task_id": card["task_id"]}}}


def test_the_welcome_is_difys_opening_with_its_questions(make_app: Any, signer: WeComSigner,
                                                         dify: DifySimulator, settings: Settings) -> None:
    dify.opening_statement = "我是报销助手。"
    dify.opening_questions = ["怎么报销差旅费？", "发票丢了怎么办？"]
    wecom = InProcessWeCom(make_app().test_client(), signer)
    reply = wecom.send(enter_chat())
    assert reply is not None and reply["msgtype"] == "template_card"
    card = reply["template_card"]
    assert card["card_type"] == "button_interaction" and card["sub_title_text"] == "我是报销助手。"
    assert card["main_title"] == {"title": settings.msg_suggestions_title}
    assert [b["text"] for b in card["button_list"]] == dify.opening_questions
    assert len(card["task_id"]) <= 128 and card["task_id"].isalnum()
    dify.opening_questions = []
    wecom2 = InProcessWeCom(make_app(welcome_text="欢迎！").test_client(), signer)  # parameters are cached 5 min
    assert wecom2.send(enter_chat())["template_card"]["sub_title_text"] == "欢迎！"  # type: ignore[index]
    assert len([r for r in dify.requests if r.path == "/v1/parameters"]) == 1


def test_the_welcome_is_in_time_with_dify_down_or_slow(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                       settings: Settings) -> None:
    down = InProcessWeCom(make_app(dify_base_url="http://127.0.0.1:1/v1").test_client(), signer)
    started = time.monotonic()
    assert down.send(enter_chat()) == {"msgtype": "text", "text": {"content": settings.msg_welcome}}
    assert time.monotonic() - started < 5
    dify.parameters_delay = 6.0  # answers, but after WeCom's 5 s
    slow = InProcessWeCom(make_app().test_client(), signer)
    started = time.monotonic()
    assert slow.send(enter_chat()) == {"msgtype": "text", "text": {"content": settings.msg_welcome}}
    assert time.monotonic() - started < 5


def conversation(redis_client: redis.Redis, settings: Settings) -> str | None:
    value = redis_client.get(Keys(settings.redis_key_prefix).conversation("u:zhangsan"))
    return value.decode() if value else None


def test_a_clicked_question_is_answered_in_the_same_conversation(make_app: Any, signer: WeComSigner,
                                                                 dify: DifySimulator, settings: Settings,
                                                                 responses: ResponseServer,
                                                                 redis_client: redis.Redis) -> None:
    dify.opening_questions = ["怎么报销差旅费？", "发票丢了怎么办？"]
    dify.script("发票丢了怎么办？", Script(answer="可以开具遗失证明。"))
    wecom = InProcessWeCom(make_app().test_client(), signer)
    first = wecom.send(text_message("你好"))  # a conversation exists before the click
    assert conversation(redis_client, settings) is None
    assert first is not None
    wecom.until_finished(first["stream"]["id"])
    card = wecom.send(enter_chat())["template_card"]  # type: ignore[index]
    click = card_click(card, "q1", responses.url("click"))
    update = wecom.send(click)
    assert update is not None and update["response_type"] == "update_template_card"
    assert update["template_card"]["task_id"] == card["task_id"] and update["userids"] == ["zhangsan"]
    assert update["template_card"]["main_title"]["desc"] == "已提问：发票丢了怎么办？"
    assert wecom.send(click) is not None  # WeCom re-delivered the click: asked once
    wait_for(lambda: responses.contents(), timeout=10)
    engine = wecom.client.application.extensions["wecom_dify"].engine  # type: ignore[attr-defined]
    wait_for(lambda: not engine.keeper.jobs(), timeout=10)  # (a second job, if any, would have run by now)
    assert responses.contents() == ["可以开具遗失证明。"]
    hello, asked = dify.chat_requests()
    assert asked.json["query"] == "发票丢了怎么办？" and asked.json["user"] == hello.json["user"]
    assert asked.json["conversation_id"] == conversation(redis_client, settings)  # the user's conversation
    unknown = card_click({"task_id": "q" + "0" * 32}, "q0", responses.url("x"))
    assert wecom.send(unknown) is None  # an expired or foreign card: nothing to ask


def test_suggested_questions_follow_the_answer_in_its_last_frame(make_app: Any, signer: WeComSigner,
                                                                 dify: DifySimulator, settings: Settings,
                                                                 responses: ResponseServer,
                                                                 redis_client: redis.Redis) -> None:
    dify.suggestions = ["还能报销什么？", "多久到账？"]
    wecom = InProcessWeCom(make_app().test_client(), signer)
    first = wecom.send(text_message("报销流程是什么？"))
    assert first is not None
    frames = wecom.until_finished(first["stream"]["id"])
    assert all(f["msgtype"] == "stream" for f in frames[:-1])
    last = frames[-1]
    assert last["msgtype"] == "stream_with_template_card" and last["stream"]["content"] == "echo: 报销流程是什么？"
    card = last["template_card"]
    assert [b["text"] for b in card["button_list"]] == dify.suggestions
    [chat] = dify.chat_requests()
    suggested = [r for r in dify.requests if r.path.endswith("/suggested")]
    assert len(suggested) == 1 and suggested[0].path == f"/v1/messages/{next(iter(dify.messages))}/suggested"
    dify.script("多久到账？", Script(answer="三个工作日。"))
    assert wecom.send(card_click(card, "q1", responses.url("s"))) is not None
    wait_for(lambda: responses.contents(), timeout=10)
    assert responses.contents() == ["三个工作日。"]
    assert dify.chat_requests()[-1].json["conversation_id"] == conversation(redis_client, settings)


def test_suggestions_are_off_by_configuration_or_when_the_app_has_none(make_app: Any, signer: WeComSigner,
                                                                       dify: DifySimulator) -> None:
    dify.suggestions = ["还能问什么？"]
    wecom = InProcessWeCom(make_app(suggestions=False).test_client(), signer)
    first = wecom.send(text_message("hi"))
    assert first is not None
    assert wecom.until_finished(first["stream"]["id"])[-1]["msgtype"] == "stream"
    assert not [r for r in dify.requests if r.path.endswith("/suggested")]
    dify.suggestions = None  # the app does not suggest: not even asked
    wecom = InProcessWeCom(make_app().test_client(), signer)
    first = wecom.send(text_message("again"))
    assert first is not None
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == "echo: again"
    assert not [r for r in dify.requests if r.path.endswith("/suggested")]


def test_a_click_the_engine_cannot_take_leaves_the_card_as_it_was(make_app: Any, signer: WeComSigner,
                                                                  dify: DifySimulator,
                                                                  responses: ResponseServer) -> None:
    dify.opening_questions = ["多久到账？"]
    app = make_app()
    wecom = InProcessWeCom(app.test_client(), signer)
    card = wecom.send(enter_chat())["template_card"]  # type: ignore[index]
    app.extensions["wecom_dify"].engine.begin_shutdown()  # a rolling update: no new work here
    assert wecom.send(card_click(card, "q0", responses.url("busy"))) is None  # to be clicked again elsewhere
    assert dify.chat_requests() == []

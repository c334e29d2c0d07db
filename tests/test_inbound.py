"""Every kind of user message gets an answer: text, voice, mixed, quotes; media the bot cannot read yet
get a clear reply saying what it can take, never silence."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from config import ConfigError, Settings
from services import metrics
from services.inbound import Inbound, read
from tests.helpers import InProcessWeCom, contents, message
from tools.dify_sim import DifySimulator
from tools.wecom_client import WeComSigner


@pytest.fixture
def wecom(app: Flask, signer: WeComSigner) -> InProcessWeCom:
    return InProcessWeCom(app.test_client(), signer)


def ask(wecom: InProcessWeCom, payload: dict[str, Any]) -> str:
    first = wecom.send(payload)
    assert first is not None
    return contents(wecom.until_finished(first["stream"]["id"]))[-1]


def test_voice_is_asked_as_its_transcription(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    assert ask(wecom, message("voice", {"content": "明天天气怎么样"})) == "echo: 明天天气怎么样"
    assert [r.json["query"] for r in dify.chat_requests()] == ["明天天气怎么样"]


def test_quoted_text_reaches_dify_as_context(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    quote = {"msgtype": "text", "text": {"content": "会议改到周五下午三点"}}
    ask(wecom, message("text", {"content": "几点？"}, quote=quote))
    quote_voice = {"msgtype": "voice", "voice": {"content": "我到了"}}
    ask(wecom, message("text", {"content": "谁到了"}, quote=quote_voice))
    braces = {"msgtype": "text", "text": {"content": "写 {query} 和 {quote}"}}
    ask(wecom, message("text", {"content": "原样"}, quote=braces))
    assert [r.json["query"] for r in dify.chat_requests()] == [  # the quoted braces stay as they are
        "「会议改到周五下午三点」\n几点？", "「我到了」\n谁到了", "「写 {query} 和 {quote}」\n原样"]


def test_the_quote_format_is_configurable(settings: Settings, redis_client: redis.Redis, signer: WeComSigner,
                                          dify: DifySimulator) -> None:
    app = create_app(settings.replace(quote_template="{query}\n\n(引用: {quote})"))
    try:
        wecom = InProcessWeCom(app.test_client(), signer)
        ask(wecom, message("text", {"content": "为什么"}, quote={"msgtype": "text", "text": {"content": "下雨了"}}))
        assert dify.chat_requests()[0].json["query"] == "为什么\n\n(引用: 下雨了)"
    finally:
        app.extensions["wecom_dify"].engine.drain(5)
    with pytest.raises(ConfigError, match="^QUOTE_TEMPLATE: must contain {query}"):
        settings.replace(quote_template="「{quote}」")


def test_mixed_text_items_are_one_question(app: Flask, signer: WeComSigner, dify: DifySimulator) -> None:
    wecom = InProcessWeCom(app.test_client(), signer)
    items = [{"msgtype": "text", "text": {"content": "@助手 第一行"}},
             {"msgtype": "text", "text": {"content": "第二行"}}]
    ask(wecom, message("mixed", {"msg_item": items}, chattype="group", chatid="g1"))
    assert dify.chat_requests()[0].json["query"] == "第一行\n第二行"  # the group's @-mention is stripped


@pytest.mark.parametrize("payload", [
    message("location", {"latitude": 1}),  # a type this bot does not know
    message("sticker", "not even an object"),
])
def test_a_type_the_bot_does_not_know_gets_a_clear_answer(wecom: InProcessWeCom, dify: DifySimulator,
                                                          settings: Settings, payload: dict[str, Any]) -> None:
    before = metrics.CALLBACKS.labels("default", "other", "unsupported")._value.get()
    first = wecom.send(payload)
    assert first is not None
    assert first["stream"]["finish"] is True and first["stream"]["content"] == settings.msg_unsupported
    again = wecom.send(payload)  # WeCom re-delivers: the same stream, answered once
    assert again is not None and again["stream"]["id"] == first["stream"]["id"]
    assert wecom.poll(first["stream"]["id"])["stream"]["content"] == settings.msg_unsupported
    assert dify.chat_requests() == []
    assert metrics.CALLBACKS.labels("default", "other", "unsupported")._value.get() == before + 1


def test_reading_odd_shapes_never_fails() -> None:
    assert read({}) == Inbound(kinds=("other",))
    assert read({"msgtype": ["a"]}) == Inbound(kinds=("other",))
    assert read({"msgtype": "text", "text": "not a dict"}).text == ""
    assert read({"msgtype": "mixed", "mixed": {"msg_item": ["x", 3, None, {"msgtype": "text"}]}}).text == ""
    assert read({"msgtype": "mixed", "mixed": {"msg_item": {"not": "a list"}}}) == Inbound(kinds=("mixed",))
    assert read({"msgtype": "text", "text": {"content": "a"}, "quote": "junk"}).quote == ""
    odd = read({"msgtype": "mixed", "mixed": {"msg_item": [{"msgtype": "file", "file": {}},
                                                           {"msgtype": "text", "text": {"content": "\ud800x"}}]}})
    assert odd.media == ("file",) and odd.text == "\ufffdx" and odd.has_media and odd.attachments == (("file", ""),)

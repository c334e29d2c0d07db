"""A Chatflow paused at a Human Input form (Dify >= 1.14): the form becomes a button card in the answer's
last frame; a click submits the choice through the service API and the rest of the answer follows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from tests.helpers import InProcessWeCom, wait_for
from tests.response_server import ResponseServer
from tools.dify_sim import DifySimulator, Form, Script
from tools.wecom_client import WeComSigner, text_message


@pytest.fixture
def wecom(settings: Settings, redis_client: redis.Redis, signer: WeComSigner) -> Iterator[InProcessWeCom]:
    app: Flask = create_app(settings.replace(wecom_response_url_hosts="127.0.0.1"))
    yield InProcessWeCom(app.test_client(), signer)
    app.extensions["wecom_dify"].engine.drain(5)


def click(card: dict[str, Any], key: str, response_url: str, msgid: str | None = None) -> dict[str, Any]:
    return {"msgid": msgid or uuid.uuid4().hex, "create_time": 1700000000, "aibotid": "AIBOTID",
            "chattype": "single", "from": {"userid": "zhangsan"}, "response_url": response_url,
            "msgtype": "event", "event": {"eventtype": "template_card_event", "template_card_event": {
                "card_type": "button_interaction", "event_key": key, "task_id": card["task_id"]}}}


def last_frame(wecom: InProcessWeCom, text: str) -> dict[str, Any]:
    first = wecom.send(text_message(text))
    assert first is not None
    return wecom.until_finished(first["stream"]["id"])[-1]


QUOTE = Form(title="审批", content="客户 ACME 报价 ¥12,000，是否发送？",
             then={"approve": "已发送报价。", "reject": "已取消。"})


def test_a_paused_chatflow_resumes_with_the_clicked_choice(wecom: InProcessWeCom, dify: DifySimulator,
                                                           responses: ResponseServer, settings: Settings) -> None:
    dify.script("报价", Script(answer="报价单已生成。", app="advanced-chat", form=QUOTE))
    last = last_frame(wecom, "报价")
    assert last["msgtype"] == "stream_with_template_card" and last["stream"]["content"] == "报价单已生成。"
    card = last["template_card"]
    assert card["main_title"]["title"] == "审批" and card["sub_title_text"] == QUOTE.content
    assert [(b["text"], b["key"]) for b in card["button_list"]] == [("同意", "a0"), ("驳回", "a1")]
    event = click(card, "a0", responses.url("approve"))
    update = wecom.send(event)
    assert update is not None and update["template_card"]["main_title"]["desc"] == "已选择：同意"
    assert wecom.send(event) is not None  # re-delivered: submitted once
    wait_for(lambda: responses.contents(), timeout=10)
    assert responses.contents() == ["已发送报价。"]
    [submit] = dify.forms.submits
    assert submit["action"] == "approve" and submit["inputs"] == {}
    assert submit["user"] == dify.chat_requests()[0].json["user"]
    order = [r.path.split("/")[2] for r in dify.requests if r.path.startswith(("/v1/workflow/", "/v1/form/"))]
    assert order == ["workflow", "form"]  # the run's events are open before the choice is sent
    late = click(card, "a1", responses.url("late"))  # another click after the form was answered
    assert wecom.send(late) is not None
    wait_for(lambda: len(responses.contents()) == 2, timeout=10)
    assert responses.contents()[1] == settings.msg_form_closed  # Dify: 412, already submitted


def test_field_defaults_are_sent_with_the_choice(wecom: InProcessWeCom, dify: DifySimulator,
                                                 responses: ResponseServer) -> None:
    form = Form(content="请确认备注：", inputs=(("comment", "请尽快报价"),), then={"approve": "好的。"})
    dify.script("确认", Script(answer="准备好了。", app="advanced-chat", form=form))
    card = last_frame(wecom, "确认")["template_card"]
    assert card["sub_title_text"] == "请确认备注：\n\n请尽快报价"  # the field's value where the form shows it
    wecom.send(click(card, "a0", responses.url("ok")))
    wait_for(lambda: responses.contents(), timeout=10)
    assert dify.forms.submits[0]["inputs"] == {"comment": "请尽快报价"}


@pytest.mark.parametrize("form", [
    Form(inputs=(("reason", None),)),  # a field the user must type: a button cannot answer it
    Form(display_in_ui=False),  # no web delivery: the service API cannot submit it
    Form(actions=()),
])
def test_a_form_a_card_cannot_carry_gets_a_clear_note(wecom: InProcessWeCom, dify: DifySimulator,
                                                      settings: Settings, form: Form) -> None:
    dify.script("表单", Script(answer="需要补充信息。", app="advanced-chat", form=form))
    last = last_frame(wecom, "表单")
    assert last["msgtype"] == "stream"
    assert last["stream"]["content"] == f"需要补充信息。\n\n{settings.msg_form_unsupported}"


def test_a_form_click_by_another_group_member_resumes_as_the_runs_user(
        wecom: InProcessWeCom, dify: DifySimulator, responses: ResponseServer, settings: Settings) -> None:
    dify.script("报价", Script(answer="报价单已生成。", app="advanced-chat", form=QUOTE))
    asked = text_message("报价", userid="zhangsan", chattype="group", chatid="g1")
    first = wecom.send(asked)
    assert first is not None
    card = wecom.until_finished(first["stream"]["id"])[-1]["template_card"]
    other = click(card, "a0", responses.url("lisi"))
    other.update({"chattype": "group", "chatid": "g1", "from": {"userid": "lisi"}})
    assert wecom.send(other) is not None
    wait_for(lambda: responses.contents(), timeout=10)
    assert responses.contents() == ["已发送报价。"]  # Dify lets only the run's user re-attach: we resume as them
    assert dify.forms.submits[0]["user"] == dify.chat_requests()[0].json["user"]


def test_a_form_answered_after_new_does_not_bring_the_old_conversation_back(
        wecom: InProcessWeCom, dify: DifySimulator, responses: ResponseServer, settings: Settings,
        redis_client: redis.Redis) -> None:
    from services.streams.keys import Keys

    key = Keys(settings.redis_key_prefix).conversation("u:zhangsan")
    dify.script("报价", Script(answer="报价单已生成。", app="advanced-chat", form=QUOTE))
    card = last_frame(wecom, "报价")["template_card"]
    first = wecom.send(text_message("/new"))
    assert first is not None
    wecom.until_finished(first["stream"]["id"])
    assert redis_client.get(key) is None
    wecom.send(click(card, "a0", responses.url("after-new")))
    wait_for(lambda: responses.contents(), timeout=10)
    assert redis_client.get(key) is None  # the next message still starts afresh


def test_a_form_after_a_form_comes_as_a_card_with_the_text(wecom: InProcessWeCom, dify: DifySimulator,
                                                           responses: ResponseServer) -> None:
    second = Form(title="复核", content="金额超过一万，是否继续？", then={"approve": "已完成两级审批。"})
    two_step = Form(title="审批", content="是否发送？", then={"approve": "一级审批通过。"}, next={"approve": second})
    dify.script("两级", Script(answer="开始审批。", app="advanced-chat", form=two_step))
    card = last_frame(wecom, "两级")["template_card"]
    wecom.send(click(card, "a0", responses.url("first")))
    wait_for(lambda: responses.received, timeout=10)
    [sent] = responses.received
    assert sent["msgtype"] == "template_card"  # the text and the next form together (a single chat)
    follow = sent["template_card"]
    assert follow["main_title"]["title"] == "复核"
    assert follow["sub_title_text"] == "一级审批通过。\n\n金额超过一万，是否继续？"
    wecom.send(click(follow, "a0", responses.url("second")))
    wait_for(lambda: len(responses.received) == 2, timeout=10)
    assert responses.received[-1]["markdown"]["content"] == "已完成两级审批。"


def test_a_lost_submit_reply_is_not_sent_twice_and_an_empty_branch_still_answers(
        wecom: InProcessWeCom, dify: DifySimulator, responses: ResponseServer, settings: Settings) -> None:
    dify.forms.fail_next = [502]  # Dify took the choice; a proxy lost the reply
    dify.script("报价", Script(answer="报价单已生成。", app="advanced-chat", form=QUOTE))
    card = last_frame(wecom, "报价")["template_card"]
    wecom.send(click(card, "a0", responses.url("lost")))
    wait_for(lambda: responses.contents(), timeout=10)
    assert responses.contents() == ["已发送报价。"] and len(dify.forms.submits) == 1  # read on, not re-sent
    quiet = Form(then={"reject": ""})  # a branch that says nothing
    dify.script("静默", Script(answer="请选择。", app="advanced-chat", form=quiet))
    card = last_frame(wecom, "静默")["template_card"]
    wecom.send(click(card, "a1", responses.url("quiet")))
    wait_for(lambda: len(responses.contents()) == 2, timeout=10)
    assert responses.contents()[1] == settings.msg_done  # never an empty message


"""Users' ratings reach Dify: the first frame turns rating on, and a feedback_event on any replica is sent
once to Dify as the rated message's feedback, as the same user."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from services import metrics
from tests.helpers import InProcessWeCom, wait_for
from tools.dify_sim import DifySimulator
from tools.wecom_client import WeComSigner, text_message


@pytest.fixture
def replicas(settings: Settings, redis_client: redis.Redis, signer: WeComSigner) -> Iterator[list[InProcessWeCom]]:
    apps: list[Flask] = [create_app(settings), create_app(settings)]  # two replicas on one Redis
    yield [InProcessWeCom(app.test_client(), signer) for app in apps]
    for app in apps:
        app.extensions["wecom_dify"].engine.drain(5)


def feedback_event(feedback_id: str, kind: int, msgid: str | None = None, **more: Any) -> dict[str, Any]:
    return {"msgid": msgid or uuid.uuid4().hex, "create_time": 1700000000, "aibotid": "AIBOTID",
            "chattype": "single", "from": {"userid": "zhangsan"}, "msgtype": "event",
            "event": {"eventtype": "feedback_event", "feedback_event": {"id": feedback_id, "type": kind, **more}}}


def count(outcome: str) -> float:
    return float(metrics.FEEDBACK.labels("default", outcome)._value.get())


def answer_on(wecom: InProcessWeCom, text: str) -> str:
    first = wecom.send(text_message(text))
    assert first is not None
    sid: str = first["stream"]["id"]
    assert first["stream"]["feedback"] == {"id": sid}  # without it WeCom never sends feedback_event
    wecom.until_finished(sid)
    return sid


def test_a_rating_on_replica_b_reaches_dify_once(replicas: list[InProcessWeCom], dify: DifySimulator) -> None:
    a, b = replicas
    sid = answer_on(a, "你好")
    [chat] = dify.chat_requests()
    message_id = next(iter(dify.messages))
    event = feedback_event(sid, 2, content="数字不对", inaccurate_reason_list=[2, 4, 9])
    assert b.send(event) is None  # the only reply WeCom accepts
    assert a.send(event) is None  # WeCom re-delivered it: still once
    wait_for(lambda: len(dify.feedbacks) == 1, timeout=5)
    assert dify.feedbacks == [{"message_id": message_id, "rating": "dislike", "user": chat.json["user"],
                               "content": "不准确：内容不完整、数据分析有误\n数字不对"}]
    before = count("sent")
    assert b.send(feedback_event(sid, 3)) is None  # withdrawn
    wait_for(lambda: count("sent") == before + 1, timeout=5)
    assert dify.feedbacks[-1] == {"message_id": message_id, "rating": None, "user": chat.json["user"]}


def test_ratings_that_cannot_be_sent_are_counted_not_raised(replicas: list[InProcessWeCom],
                                                            dify: DifySimulator) -> None:
    a, _ = replicas
    unknown = count("unknown_answer")
    assert a.send(feedback_event("0" * 32, 1)) is None  # an answer we never made (or long expired)
    wait_for(lambda: count("unknown_answer") == unknown + 1, timeout=5)
    invalid = count("invalid")
    for bad in (feedback_event("x", 7), feedback_event("", 1), {"msgid": "m", "msgtype": "event",
                                                                 "event": {"eventtype": "feedback_event"}}):
        assert a.send(bad) is None
    assert count("invalid") == invalid + 3
    sid = answer_on(a, "hi")
    nothing = count("nothing_to_withdraw")
    assert a.send(feedback_event(sid, 3)) is None  # withdrawing a rating never given: Dify says 400
    wait_for(lambda: count("nothing_to_withdraw") == nothing + 1, timeout=5)
    assert dify.feedbacks == []

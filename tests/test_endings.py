"""Answers that used to end in a generic failure: a conversation Dify lost (ping-only streams), a
Chatflow stopped or failed after partial text; and a failed answer never keeps its conversation alive."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from config import Settings
from services.streams.keys import Keys
from tests.helpers import InProcessWeCom, contents
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message


def ask(wecom: InProcessWeCom, text: str) -> str:
    first = wecom.send(text_message(text))
    assert first is not None
    return contents(wecom.until_finished(first["stream"]["id"]))[-1]


def conversation_key(settings: Settings) -> str:
    return Keys(settings.redis_key_prefix).conversation("u:zhangsan")


def test_a_conversation_dify_lost_is_recovered_within_the_first_output_deadline(
        make_app: Any, signer: WeComSigner, dify: DifySimulator, settings: Settings,
        redis_client: redis.Redis) -> None:
    dify.dead_conversation_pings = True  # Dify >= 1.13 Chatflow: 200 and pings, never the 404
    dify.script("你好", Script(answer="新对话里的回答", app="advanced-chat"))
    dead = str(uuid.uuid4())
    redis_client.set(conversation_key(settings), dead, ex=600)
    wecom = InProcessWeCom(make_app(dify_first_output_seconds=1.0).test_client(), signer)
    started = time.monotonic()
    assert ask(wecom, "你好") == "新对话里的回答"
    assert time.monotonic() - started < 1.0 + 3.0  # the deadline, not the 120 s idle timeout
    stale, fresh = dify.chat_requests()
    assert stale.json["conversation_id"] == dead and "conversation_id" not in fresh.json
    probes = [r for r in dify.requests if r.path == "/v1/messages"]
    assert len(probes) == 1 and probes[0].headers["authorization"] == "Bearer app-test-key"
    new = redis_client.get(conversation_key(settings))
    assert new is not None and new.decode() != dead
    assert ask(wecom, "你好") == "新对话里的回答"  # the next message goes on in the new conversation
    assert dify.chat_requests()[-1].json["conversation_id"] == new.decode()


def test_a_slow_answer_in_a_live_conversation_is_waited_for(make_app: Any, signer: WeComSigner,
                                                             dify: DifySimulator, settings: Settings,
                                                             redis_client: redis.Redis) -> None:
    wecom = InProcessWeCom(make_app(dify_first_output_seconds=0.5).test_client(), signer)
    assert ask(wecom, "first") == "echo: first"
    live = redis_client.get(conversation_key(settings))
    dify.script("slow", Script(answer="想了很久", delay=1.5, leading_ping=True))  # no data frame for 1.5 s
    assert ask(wecom, "slow") == "想了很久"
    assert len(dify.chat_requests()) == 2 and dify.chat_requests()[1].json["conversation_id"] == live.decode()
    assert len([r for r in dify.requests if r.path == "/v1/messages"]) == 1  # asked once; it exists
    assert redis_client.get(conversation_key(settings)) == live


def test_a_failed_answer_does_not_renew_its_conversation(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                         settings: Settings, redis_client: redis.Redis) -> None:
    wecom = InProcessWeCom(make_app().test_client(), signer)
    ask(wecom, "first")
    redis_client.expire(conversation_key(settings), 100)
    dify.script("boom", Script(answer="半句", delta_size=1, error_after=1))
    assert ask(wecom, "boom").endswith(settings.msg_dify_failed)
    assert redis_client.ttl(conversation_key(settings)) <= 100
    assert ask(wecom, "ok") == "echo: ok"  # an answer that succeeds renews it
    assert redis_client.ttl(conversation_key(settings)) > 100


@pytest.mark.parametrize(("script", "note"), [
    (Script(answer="已经写了一半的回答", delta_size=3, app="advanced-chat", stopped_after=2), "msg_stopped"),
    (Script(answer="已经写了一半的回答", delta_size=3, app="advanced-chat", error_after=2), "msg_dify_failed"),
])
def test_a_chatflow_stopped_or_failed_keeps_its_partial_text(make_app: Any, signer: WeComSigner,
                                                             dify: DifySimulator, settings: Settings,
                                                             script: Script, note: str) -> None:
    dify.script("q", script)
    wecom = InProcessWeCom(make_app().test_client(), signer)
    assert ask(wecom, "q") == f"已经写了一半\n\n{getattr(settings, note)}"


def test_new_starts_a_fresh_conversation_after_the_running_answer(make_app: Any, signer: WeComSigner,
                                                                   dify: DifySimulator, settings: Settings,
                                                                   redis_client: redis.Redis) -> None:
    wecom = InProcessWeCom(make_app().test_client(), signer)
    ask(wecom, "first")
    old = redis_client.get(conversation_key(settings))
    dify.script("long", Script(answer="长" * 60, delta_size=3, delay=0.03))  # still running when /new arrives
    running = wecom.send(text_message("long"))
    reset = wecom.send(text_message("新对话"))
    after = wecom.send(text_message("next"))
    assert running and reset and after
    assert contents(wecom.until_finished(reset["stream"]["id"]))[-1] == settings.msg_new_ack
    assert contents(wecom.until_finished(running["stream"]["id"]))[-1] == "长" * 60  # it finished first
    assert contents(wecom.until_finished(after["stream"]["id"]))[-1] == "echo: next"
    long_req, next_req = dify.chat_requests()[1:]
    assert long_req.json["conversation_id"] == old.decode() and "conversation_id" not in next_req.json
    assert redis_client.get(conversation_key(settings)) not in (None, old)  # the new one, kept
    assert len(dify.chat_requests()) == 3  # /new itself never reaches Dify

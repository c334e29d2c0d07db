"""/metrics across two gunicorn workers after a real conversation; what the logs may not contain."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
import redis
import requests

from tests.conftest import AES_KEY, TOKEN
from tests.procs import Replica
from tests.response_server import ResponseServer
from tests.test_replicas import replica_env
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, WeComSigner, text_message

pytestmark = pytest.mark.process
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([-+0-9.eE]+|NaN|[+-]Inf)$")


def scrape(url: str) -> dict[str, float]:
    resp = requests.get(f"{url}/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def replica(redis_url: str, redis_client: redis.Redis, dify: DifySimulator) -> Iterator[Replica]:
    responses = ResponseServer()
    r = Replica(replica_env(redis_url, dify, LOG_LEVEL="INFO", WECOM_RESPONSE_URL_HOSTS="127.0.0.1",
                            ENGINE_CAPACITY="10"), workers=2).start()
    r.responses = responses  # type: ignore[attr-defined]
    yield r
    r.stop()
    responses.close()


def test_metrics_move_by_the_right_amounts_across_two_workers(replica: Replica, dify: DifySimulator) -> None:
    url = replica.url
    deadline = time.monotonic() + 15
    while scrape(url).get("wecom_dify_engine_capacity") != 2 * 10 and time.monotonic() < deadline:
        time.sleep(0.2)  # until the second worker has booted
    before = scrape(url)
    assert before["wecom_dify_engine_capacity"] == 2 * 10  # one gauge file per worker, summed
    dify.script("你好", Script(answer="指标测试的回答。" * 20, delta_size=4, delay=0.01))
    dify.script("boom", Script(answer="坏掉", delta_size=1, error_after=1, error_code="completion_request_error"))
    client = WeComClient(WeComSigner(TOKEN, AES_KEY))  # one connection per request: both workers serve
    payload = text_message("你好", msgid="metrics-1", response_url=replica.responses.url())  # type: ignore[attr-defined]
    frames = client.converse([url], payload, interval=0.1)
    polls = len(frames) - 1
    client.send(url, payload)  # a re-delivery
    client.converse([url], text_message("boom"), interval=0.1)
    client.send(url, {"msgid": "e1", "msgtype": "event", "event": {"eventtype": "enter_chat"}})
    requests.get(f"{url}/wecom/callback?msg_signature=0&timestamp=1&nonce=2&echostr=x", timeout=5)
    time.sleep(0.3)
    after = scrape(url)

    def d(key: str) -> float:
        return delta(before, after, key)

    assert d('wecom_dify_callbacks_total{bot="default",msgtype="text",outcome="started"}') == 2
    assert d('wecom_dify_callbacks_total{bot="default",msgtype="text",outcome="duplicate"}') == 1
    assert d('wecom_dify_duplicate_deliveries_total{bot="default"}') == 1
    assert d('wecom_dify_callbacks_total{bot="default",msgtype="event",outcome="welcome"}') == 1
    assert d('wecom_dify_callbacks_total{bot="default",msgtype="verify",outcome="rejected_signature"}') == 1
    refreshes = d('wecom_dify_callbacks_total{bot="default",msgtype="stream",outcome="partial"}') + \
        d('wecom_dify_callbacks_total{bot="default",msgtype="stream",outcome="final"}')
    assert d('wecom_dify_callbacks_total{bot="default",msgtype="stream",outcome="final"}') == 2
    assert refreshes >= polls + 1
    assert d('wecom_dify_callback_seconds_count{msgtype="text"}') == 3
    assert d('wecom_dify_callback_seconds_count{msgtype="stream"}') == refreshes
    assert d('wecom_dify_streams_ended_total{bot="default",reason="done"}') == 1
    assert d('wecom_dify_streams_ended_total{bot="default",reason="failed"}') == 1
    assert d('wecom_dify_dify_errors_total{bot="default",code="completion_request_error"}') == 1
    assert d('wecom_dify_first_text_seconds_count{bot="default"}') == 2
    assert d('wecom_dify_stream_seconds_count{bot="default",status="done"}') == 1
    assert d('wecom_dify_polls_per_stream_count') == 2
    assert after['wecom_dify_engine_jobs{bot="default"}'] == 0  # everything admitted was released


def test_logs_are_json_and_hold_no_secrets_or_message_text(replica: Replica, dify: DifySimulator) -> None:
    secret_question = "我的工资是多少 secret-question"
    dify.script(secret_question, Script(answer="机密回答 secret-answer"))
    client = WeComClient(WeComSigner(TOKEN, AES_KEY))
    frames = client.converse([replica.url], text_message(secret_question, userid="zhangsan"), interval=0.1)
    assert frames[-1]["stream"]["content"] == "机密回答 secret-answer"
    time.sleep(0.3)
    lines = [line for line in replica.output().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "event"} <= events[0].keys()
    started = next(e for e in events if e["event"] == "stream started")
    assert started["sid"] and started["msgid"] and started["user"].startswith("u_")
    for needle in (TOKEN, AES_KEY, "app-test-key", "secret-question", "我的工资", "secret-answer", "机密回答",
                   "zhangsan"):
        assert needle not in replica.output(), needle

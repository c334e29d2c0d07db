"""Signed event webhooks to a real receiver: every signature verifies, retries keep the event id, and a
receiver that hangs delays no answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from config import ConfigError, Settings
from services.engine.reports import event_id
from services.webhooks import sign, verify
from tests.helpers import InProcessWeCom, wait_for
from tests.hook_servers import WebhookReceiver
from tests.servers import free_port
from tools.dify_sim import DifySimulator
from tools.wecom_client import WeComSigner, event_message, text_message

SECRET = "whsec-0123456789abcdef"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(SECRET)
    yield server
    server.close()


def hooked(make_app: Any, receiver: WebhookReceiver, **more: Any) -> Flask:
    app: Flask = make_app(webhook_url=receiver.url, webhook_secret=SECRET, **more)
    return app


def ask(wecom: InProcessWeCom, payload: dict[str, Any]) -> tuple[str, str, float]:
    """Send a message and poll it to its end: (stream id, final content, seconds it took)."""
    started = time.monotonic()
    first = wecom.send(payload)
    assert first is not None
    frames = [first] if first["stream"]["finish"] else wecom.until_finished(first["stream"]["id"], interval=0.02)
    return first["stream"]["id"], frames[-1]["stream"]["content"], time.monotonic() - started


def test_every_event_is_signed_and_says_what_happened(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                       receiver: WebhookReceiver, dify: DifySimulator) -> None:
    wecom = InProcessWeCom(hooked(make_app, receiver).test_client(), signer)
    sid, content, _ = ask(wecom, text_message("发给 n8n", userid="lisi", msgid="wh-1"))
    assert wecom.send(event_message("feedback_event", {"id": sid, "type": 2, "content": "不对"}, userid="lisi")) is None
    wait_for(lambda: len(receiver.events()) == 3, timeout=15)
    received, finished, feedback = (receiver.events(k)[0] for k in ("message.received", "answer.finished", "feedback"))
    assert all(d.verified for d in receiver.deliveries)
    assert received["data"] == {"msgid": "wh-1", "stream_id": sid, "userid": "lisi", "chatid": "",
                                "query": "发给 n8n"}
    assert received["id"] == event_id("default", "message.received", "wh-1") and received["bot"] == "default"
    assert finished["data"]["answer"] == content == "echo: 发给 n8n" and finished["data"]["status"] == "finished"
    assert finished["data"]["usage"]["total_tokens"] == 46 and finished["data"]["dify_message_id"]
    assert feedback["data"] == {"stream_id": sid, "userid": "lisi", "rating": "dislike", "content": "不对"}
    assert len({e["id"] for e in receiver.events()}) == 3
    headers = receiver.deliveries[0].headers
    assert headers["X-WeComDify-Event-Id"] == receiver.deliveries[0].event["id"]


def test_a_receiver_error_is_retried_with_the_same_event_id(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                            receiver: WebhookReceiver) -> None:
    receiver.fail = 2  # the first two deliveries get a 500
    wecom = InProcessWeCom(hooked(make_app, receiver, webhook_events="answer.finished").test_client(), signer)
    ask(wecom, text_message("重试", msgid="wh-retry"))
    wait_for(lambda: receiver.events("answer.finished"), timeout=20)
    tries = [d for d in receiver.deliveries if d.event["type"] == "answer.finished"]
    assert [d.status for d in tries] == [500, 500, 200]
    assert len({d.event["id"] for d in tries}) == 1 and all(d.verified for d in tries)
    assert len({d.headers["X-WeComDify-Timestamp"] for d in tries}) >= 2  # each try signed anew


def test_a_receiver_that_hangs_delays_no_answer(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                receiver: WebhookReceiver) -> None:
    plain = InProcessWeCom(make_app().test_client(), signer)
    hanging = InProcessWeCom(hooked(make_app, receiver, webhook_timeout=4.0).test_client(), signer)
    receiver.hang = 5.0  # longer than the webhook timeout: every delivery times out
    baseline = [ask(plain, text_message(f"基线 {i}", userid=f"b{i}"))[2] for i in range(8)]
    hung = [ask(hanging, text_message(f"挂起 {i}", userid=f"h{i}"))[2] for i in range(8)]
    assert max(hung) < 2.0, hung  # far below the 4 s a delivery waits: nobody waited for one
    print(f"answer latency, median: no webhook {sorted(baseline)[4] * 1000:.0f} ms, "
          f"hanging receiver {sorted(hung)[4] * 1000:.0f} ms")
    wait_for(lambda: len(receiver.deliveries) >= 4, timeout=20)  # the deliveries were really attempted


def test_signatures_are_checked_in_constant_time_and_refuse_old_or_forged_deliveries() -> None:
    body, now = b'{"id":"e1"}', 1_800_000_000
    signature = sign(SECRET, now, body)
    assert verify(SECRET, str(now), body, signature, now=now + 299)
    assert not verify(SECRET, str(now), body, signature, now=now + 301)  # a replay, too late
    assert not verify(SECRET, str(now), body + b" ", signature, now=now)
    assert not verify("other-secret-123456", str(now), body, signature, now=now)
    assert not verify(SECRET, "not-a-number", body, signature, now=now)


def test_webhook_settings_fail_fast(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        settings.replace(webhook_url="https://n8n.example.com/webhook/x")
    with pytest.raises(ConfigError, match="WEBHOOK_URL: host 'evil.example.com' is not in WEBHOOK_HOSTS"):
        settings.replace(webhook_url="https://evil.example.com/x", webhook_secret=SECRET,
                         webhook_hosts="n8n.example.com")
    with pytest.raises(ConfigError, match="WEBHOOK_EVENTS"):
        settings.replace(webhook_url="https://n8n.example.com/x", webhook_secret=SECRET, webhook_events="everything")
    ok = settings.replace(webhook_url="https://n8n.example.com/a, http://10.0.0.5:5678/b", webhook_secret=SECRET)
    assert ok.webhook_allowed_hosts == ["10.0.0.5:5678", "n8n.example.com"]


def test_commands_make_no_events(make_app, signer: WeComSigner, receiver: WebhookReceiver) -> None:  # type: ignore[no-untyped-def]
    wecom = InProcessWeCom(hooked(make_app, receiver).test_client(), signer)
    ask(wecom, text_message("/new", msgid="cmd-new"))
    ask(wecom, text_message("之后", msgid="after-new"))
    wait_for(lambda: len(receiver.events()) == 2, timeout=10)
    time.sleep(0.5)
    # (two deliveries per URL are in flight at once: they may arrive in either order)
    assert sorted((e["type"], e["data"]["msgid"]) for e in receiver.events()) == \
        [("answer.finished", "after-new"), ("message.received", "after-new")]


def test_a_dead_receiver_holds_back_no_other_url(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                 receiver: WebhookReceiver) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: every delivery is refused at once
    app = make_app(webhook_url=f"{dead},{receiver.url}", webhook_secret=SECRET, webhook_timeout=1.0)
    wecom = InProcessWeCom(app.test_client(), signer)
    for i in range(70):  # 140 events each: more than a worker holds for the dead URL
        ask(wecom, text_message(f"第 {i} 条", userid=f"d{i}", msgid=f"dead-{i}"))
    wait_for(lambda: len(receiver.events()) == 140, timeout=30)
    ask(wecom, text_message("最后一条", msgid="last"))
    wait_for(lambda: len(receiver.events()) == 142, timeout=5)  # not behind the dead URL's retries

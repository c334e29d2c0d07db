"""Several bots in one app: each with its own credentials, key namespace and Dify app, kept apart."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings, parse_bots
from services.engine.capacity import Capacity
from tests.conftest import AES_KEY, TOKEN
from tests.helpers import InProcessWeCom, contents
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, stream_refresh, text_message
from utils.logging import JsonFormatter

CREDENTIALS = {  # bot id → (token, EncodingAESKey, Dify API key)
    "hr": ("hrToken0001", "H" * 42 + "A", "app-hr-key"),
    "it": ("itToken0002", "ITkey" * 8 + "abc", "app-it-key"),
    "default": (TOKEN, AES_KEY, "app-default-key"),
}


@pytest.fixture(scope="module")
def difys() -> Iterator[dict[str, DifySimulator]]:
    """One Dify app per bot, each accepting only its own API key."""
    sims = {bot: DifySimulator(api_keys={key}).start() for bot, (_, _, key) in CREDENTIALS.items()}
    yield sims
    for sim in sims.values():
        sim.stop()


def bots_file(difys: dict[str, DifySimulator]) -> str:
    """A bots file for the three bots, every secret given as a ${VAR} reference."""
    parts = []
    for bot in CREDENTIALS:
        up = bot.upper()
        parts.append(f'[bots.{bot}]\nwecom_token = "${{TOKEN_{up}}}"\nwecom_encoding_aes_key = "${{AES_{up}}}"\n'
                     f'dify_base_url = "{difys[bot].url}"\ndify_api_key = "${{DIFY_{up}}}"\n'
                     f'[bots.{bot}.messages]\nexpired = "{bot}: expired"\n')
    return "\n".join(parts)


def environ() -> dict[str, str]:
    """The environment variables the bots file refers to."""
    env = {}
    for bot, (token, key, api_key) in CREDENTIALS.items():
        up = bot.upper()
        env |= {f"TOKEN_{up}": token, f"AES_{up}": key, f"DIFY_{up}": api_key}
    return env


@pytest.fixture
def multi(settings: Settings, redis_client: redis.Redis, difys: dict[str, DifySimulator]) -> Iterator[Flask]:
    """An app serving three bots on the test Redis."""
    for sim in difys.values():
        sim.reset()
    base = settings.replace(bots_file="bots.toml", engine_capacity=20)
    app = create_app(base, parse_bots(bots_file(difys), base, environ()))
    yield app
    app.extensions["wecom_dify"].engine.drain(5)


def wecom(app: Flask, bot: str, *, signed_as: str | None = None, path: str | None = None) -> InProcessWeCom:
    token, key, _ = CREDENTIALS[signed_as or bot]
    return InProcessWeCom(app.test_client(), WeComSigner(token, key, ""), path or f"/wecom/callback/{bot}")


def test_each_bot_answers_from_its_own_dify_app(multi: Flask, difys: dict[str, DifySimulator]) -> None:
    for bot, sim in difys.items():
        sim.script(f"问{bot}", Script(answer=f"{bot} 的回答，" * 20, delta_size=3, delay=0.005))
    for bot in CREDENTIALS:
        client = wecom(multi, bot)
        first = client.send(text_message(f"问{bot}", msgid="same-msgid", userid="zhangsan"))
        assert first is not None
        frames = client.until_finished(first["stream"]["id"])
        assert contents(frames)[-1] == f"{bot} 的回答，" * 20
    for bot, sim in difys.items():
        chats = sim.chat_requests()
        assert [r.json["query"] for r in chats] == [f"问{bot}"]  # the same msgid on each bot: one answer each
        assert chats[0].headers["authorization"] == f"Bearer {CREDENTIALS[bot][2]}"
        assert chats[0].json["user"] == f"wecom:{bot}:zhangsan"  # Dify users never cross bots


def test_default_bot_of_a_bots_file_is_also_at_the_short_url(multi: Flask, difys: dict[str, DifySimulator]) -> None:
    client = wecom(multi, "default", path="/wecom/callback")
    first = client.send(text_message("你好"))
    assert first is not None
    client.until_finished(first["stream"]["id"])
    assert len(difys["default"].chat_requests()) == 1
    assert difys["hr"].chat_requests() == [] and difys["it"].chat_requests() == []


def test_an_unknown_bot_is_404_before_anything_is_decrypted(multi: Flask) -> None:
    signed = WeComSigner(*CREDENTIALS["hr"][:2], "").callback(text_message("hi"))
    http = multi.test_client()
    for path in ("/wecom/callback/nope", "/wecom/callback/HR", "/wecom/callback/hr/x", "/wecom/callback/" + "a" * 40):
        assert http.post(f"{path}?{signed.query_string}", data=signed.body).status_code == 404
        assert http.post(path, data=b"not even encrypted").status_code == 404  # nothing was looked at
        assert http.get(f"{path}?msg_signature=x&timestamp=1&nonce=2&echostr=y").status_code == 404


def test_a_callback_signed_for_another_bot_is_refused(multi: Flask, difys: dict[str, DifySimulator]) -> None:
    http = multi.test_client()
    signed = WeComSigner(*CREDENTIALS["hr"][:2], "").callback(text_message("越权"))
    resp = http.post(f"/wecom/callback/it?{signed.query_string}", data=signed.body)
    assert resp.status_code == 403 and resp.data == b"rejected: -40001\n"
    verify = WeComSigner(*CREDENTIALS["hr"][:2], "").verify_request("echo-hr")
    assert http.get(f"/wecom/callback/it?{verify.query_string}").status_code == 403
    assert http.get(f"/wecom/callback/hr?{verify.query_string}").data == b"echo-hr"
    time.sleep(0.2)
    assert all(sim.chat_requests() == [] for sim in difys.values())


def test_a_stream_polled_through_another_bot_is_expired(multi: Flask, difys: dict[str, DifySimulator]) -> None:
    secret = "只属于 HR 的回答"
    difys["hr"].script("机密", Script(answer=secret, delta_size=2, delay=0.01))
    hr = wecom(multi, "hr")
    first = hr.send(text_message("机密"))
    assert first is not None
    sid = first["stream"]["id"]
    assert contents(hr.until_finished(sid))[-1] == secret
    frame = wecom(multi, "it").poll(sid)
    assert frame["stream"] == {"id": sid, "finish": True, "content": "it: expired"}
    assert hr.poll(sid)["stream"]["content"] == secret  # still there for its own bot


def test_every_key_is_namespaced_by_its_bot_and_expires(multi: Flask, redis_client: redis.Redis,
                                                        difys: dict[str, DifySimulator]) -> None:
    for bot in CREDENTIALS:
        client = wecom(multi, bot)
        for text in ("第一", "第二"):
            first = client.send(text_message(text, userid="lisi"))
            assert first is not None
            client.until_finished(first["stream"]["id"])
        client.send(text_message("/stop", userid="lisi"))
    keys = [k.decode() for k in redis_client.scan_iter(count=1000)]
    assert keys
    by_bot = {bot: [k for k in keys if k.startswith(f"wecomdify:{bot}:")] for bot in CREDENTIALS}
    assert sum(len(v) for v in by_bot.values()) == len(keys), keys  # nothing outside a bot's namespace
    for bot, owned in by_bot.items():
        assert any(":conv:" in k for k in owned) and any(":msg:" in k for k in owned), (bot, owned)
    assert all(redis_client.ttl(k) > 0 for k in keys)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the app's JSON log handler writes, captured."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    yield out
    logging.getLogger().removeHandler(handler)


def test_logs_and_readyz_name_the_bot(multi: Flask, difys: dict[str, DifySimulator], log_lines: io.StringIO) -> None:
    difys["it"].script("坏", Script(answer="x", error_after=0, error_code="provider_quota_exceeded"))
    status = json.loads(multi.test_client().get("/readyz").data)
    assert status["dify"] == {"hr": "unknown", "it": "unknown", "default": "unknown"}
    for bot, text in (("hr", "好"), ("it", "坏")):
        client = wecom(multi, bot)
        first = client.send(text_message(text))
        assert first is not None
        client.until_finished(first["stream"]["id"])
    status = json.loads(multi.test_client().get("/readyz").data)
    assert status["dify"]["hr"] == "ok" and status["dify"]["default"] == "unknown"
    assert status["dify"]["it"].startswith("failing: provider_quota_exceeded (")
    assert len(difys["hr"].chat_requests()) == 1  # /readyz itself asked no Dify anything
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    started = {line["bot"] for line in lines if line["event"] == "stream started"}
    assert started == {"hr", "it"}
    failed = [line for line in lines if line["event"] == "dify failed"]  # written on the engine's loop
    assert [line["bot"] for line in failed] == ["it"]


def test_metrics_count_per_bot(multi: Flask, difys: dict[str, DifySimulator]) -> None:
    from services import metrics

    before = {bot: metrics.CALLBACKS.labels(bot, "text", "started")._value.get() for bot in CREDENTIALS}
    for bot in ("hr", "hr", "it"):
        client = wecom(multi, bot)
        first = client.send(text_message("数一数"))
        assert first is not None
        client.until_finished(first["stream"]["id"])
    after = {bot: metrics.CALLBACKS.labels(bot, "text", "started")._value.get() for bot in CREDENTIALS}
    assert {bot: after[bot] - before[bot] for bot in CREDENTIALS} == {"hr": 2, "it": 1, "default": 0}


def test_each_bot_keeps_its_share_of_the_capacity() -> None:
    capacity = Capacity(10, {"a": 0.25, "b": 0.25})
    assert capacity.reserved == {"a": 2, "b": 2}
    taken = 0
    while capacity.take("a"):
        taken += 1
    assert taken == 8  # its own 2 and the 6 nobody reserved
    assert capacity.take("b") and capacity.take("b")  # b's own 2 are still there
    assert not capacity.take("b")  # the shared rest is a's now
    capacity.give_back("a")  # one of a's answers ended
    assert capacity.take("b") and not capacity.take("a")  # first come, first served for the shared rest
    assert (capacity.held("a"), capacity.held("b"), capacity.admitted) == (7, 3, 10)


def test_one_bot_alone_still_gets_the_whole_capacity() -> None:
    capacity = Capacity(7, {"default": 0.5})
    assert sum(capacity.take("default") for _ in range(10)) == 7


def test_shares_that_add_up_to_everything_partition_the_capacity() -> None:
    capacity = Capacity(10, {"a": 0.6, "b": 0.4})
    assert sum(capacity.take("a") for _ in range(10)) == 6
    assert sum(capacity.take("b") for _ in range(10)) == 4


def test_poll_of_a_bot_answers_with_its_own_texts(multi: Flask) -> None:
    reply = wecom(multi, "hr").send(stream_refresh("f" * 32))
    assert reply is not None and reply["stream"]["content"] == "hr: expired"


def test_a_bot_keeps_at_least_one_slot_whatever_the_shares() -> None:
    capacity = Capacity(512, {"a": 1.0, "b": 0.0})  # shares adding up to 1 leave the others nothing ...
    assert capacity.reserved == {"a": 511, "b": 1}  # ... but each bot still keeps one
    assert capacity.take("b")
    assert Capacity(100, {"a": 0.29, "b": 0.57}).reserved == {"a": 29, "b": 57}  # no slot lost to float rounding
    assert Capacity(3, {"a": 1 / 6, "b": 1 / 6, "c": 1 / 6}).reserved == {"a": 1, "b": 1, "c": 1}


def test_slow_io_of_one_bot_leaves_threads_for_the_others(multi: Flask) -> None:
    import threading

    from services.engine import Job

    bridge = multi.extensions["wecom_dify"]
    engine = bridge.engine
    engine.start()
    release = threading.Event()
    hung = [Job(sid=f"{i:032x}", bot=bridge.bots["hr"], msgid=f"m{i}", query="q", dify_user="u", scope="u:x")
            for i in range(8)]
    try:
        stuck = [engine._thread.submit(engine.io(job, release.wait, 30)) for job in hung]  # e.g. a hung auth API
        other = Job(sid="f" * 32, bot=bridge.bots["it"], msgid="m", query="q", dify_user="u", scope="u:y")
        assert engine._thread.submit(engine.io(other, lambda: "answered")).result(timeout=5) == "answered"
    finally:
        release.set()
    assert all(f.result(timeout=5) is True for f in stuck)


def test_the_bot_of_a_request_does_not_stay_on_its_thread(multi: Flask, log_lines: io.StringIO) -> None:
    app = multi
    wecom(app, "hr").send(stream_refresh("f" * 32))
    with app.test_request_context("/livez"):
        logging.getLogger("tests").warning("not a bot's line")
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert [line.get("bot") for line in lines if line["event"] == "not a bot's line"] == [None]


def test_without_a_bots_file_the_bot_default_also_has_the_long_url(app: Flask, signer: WeComSigner,
                                                                   dify: DifySimulator) -> None:
    client = InProcessWeCom(app.test_client(), signer, "/wecom/callback/default")
    first = client.send(text_message("你好"))
    assert first is not None
    assert contents(client.until_finished(first["stream"]["id"]))[-1] == "echo: 你好"
    assert InProcessWeCom(app.test_client(), signer).poll(first["stream"]["id"])["stream"]["content"] == "echo: 你好"
    assert dify.chat_requests()[0].json["user"] == "wecom:zhangsan"  # the single bot's names are unchanged

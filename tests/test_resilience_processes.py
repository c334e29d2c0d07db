"""Issue 5 at process level: two gunicorn replicas on one real Redis, killed, stopped and starved."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests

from config import Settings
from tests.conftest import AES_KEY, TOKEN
from tests.helpers import wait_for
from tests.procs import Replica
from tests.response_server import ResponseServer
from tests.servers import RedisServer
from tests.test_replicas import replica_env
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, WeComSigner, text_message

pytestmark = pytest.mark.process
LIMIT = 20480
DEFAULTS = Settings(wecom_token=TOKEN, wecom_encoding_aes_key=AES_KEY, dify_base_url="http://x/v1",
                    dify_api_key="k")




@pytest.fixture
def start_pair(dify: DifySimulator) -> Iterator[Callable[..., list[Replica]]]:
    started: list[Replica] = []

    def start(redis_url: str, **env: str) -> list[Replica]:
        base = replica_env(redis_url, dify, WECOM_RESPONSE_URL_HOSTS="127.0.0.1", SHUTDOWN_DRAIN_SECONDS="2",
                           **env)
        pair = [Replica(base), Replica(base)]
        for r in pair:
            r.start()
        started.extend(pair)
        return pair

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def wecom() -> WeComClient:
    return WeComClient(WeComSigner(TOKEN, AES_KEY), timeout=5)


def test_window_finishes_in_time_and_the_answer_arrives_once(start_pair, wecom: WeComClient,  # type: ignore[no-untyped-def]
                                                             dify: DifySimulator, responses: ResponseServer,
                                                             redis_url: str, redis_client: redis.Redis) -> None:
    a, b = start_pair(redis_url, STREAM_WINDOW_SECONDS="3")
    answer = "窗口测试的完整回答，" * 30
    dify.script("slow", Script(answer=answer, delta_size=6, delay=0.12))  # ~6 s
    started = time.monotonic()
    frames = wecom.converse([a.url, b.url], text_message("slow", response_url=responses.url()), interval=0.3)
    assert frames[-1]["stream"]["finish"] is True
    assert time.monotonic() - started < 4.5  # closed at the 3 s window, well before the answer is done
    assert frames[-1]["stream"]["content"].endswith(DEFAULTS.msg_window)
    wait_for(lambda: bool(responses.contents()))
    time.sleep(1.0)
    assert responses.contents() == [answer]


def test_fifty_thousand_byte_answer(start_pair, wecom: WeComClient, dify: DifySimulator,  # type: ignore[no-untyped-def]
                                    responses: ResponseServer, redis_url: str, redis_client: redis.Redis) -> None:
    a, b = start_pair(redis_url)
    answer = ("长回答测试：企业微信的流式消息最多两万零四百八十字节。" * 1000)[:17000]
    assert len(answer.encode()) > 50_000
    dify.script("long", Script(answer=answer, delta_size=300, delay=0.01))
    frames = wecom.converse([a.url, b.url], text_message("long", response_url=responses.url()), interval=0.1)
    for frame in frames:
        raw = frame["stream"]["content"].encode("utf-8")
        assert len(raw) <= LIMIT
        raw.decode("utf-8", "strict")
    final = frames[-1]["stream"]["content"]
    assert final.endswith(DEFAULTS.msg_overflow)
    shown = final[: -len(DEFAULTS.msg_overflow)].rstrip("\n")
    wait_for(lambda: bool(responses.contents()))
    time.sleep(1.0)
    [rest] = responses.contents()
    assert len(rest.encode()) <= LIMIT
    body = rest[: -len(DEFAULTS.msg_truncated)].rstrip("\n") if rest.endswith(DEFAULTS.msg_truncated) else rest
    assert answer.startswith(shown + body) and body  # no duplicated and no missing text between the two


def test_sigkill_of_the_producer_replica(start_pair, wecom: WeComClient, dify: DifySimulator,  # type: ignore[no-untyped-def]
                                         redis_url: str, redis_client: redis.Redis) -> None:
    a, b = start_pair(redis_url, PRODUCER_LEASE_SECONDS="2")
    dify.script("long", Script(answer="被杀掉之前的内容。" * 300, delta_size=3, delay=0.02))
    first = wecom.send(a.url, text_message("long"))
    assert first is not None
    sid = first["stream"]["id"]
    wait_for(lambda: len(wecom.poll(b.url, sid)["stream"]["content"]) > 20)
    a.kill_all()
    killed = time.monotonic()
    frames = []
    while time.monotonic() - killed < 10:
        frames.append(wecom.poll(b.url, sid)["stream"])
        if frames[-1]["finish"]:
            break
        time.sleep(0.5)
    ended = time.monotonic() - killed
    assert frames[-1]["finish"] is True
    assert ended <= 2 + 0.5 + 1.0  # lease + one poll interval (+ scheduling slack)
    final = frames[-1]["content"]
    assert final.endswith(DEFAULTS.msg_interrupted) and final.count(DEFAULTS.msg_interrupted) == 1
    text = final[: -len(DEFAULTS.msg_interrupted)].rstrip("\n")
    assert ("被杀掉之前的内容。" * 300).startswith(text)  # no duplicated text
    for _ in range(3):
        assert wecom.poll(b.url, sid)["stream"] == frames[-1]  # the same terminal frame every time


@pytest.mark.parametrize(("delay", "outcome"), [(0.01, "done"), (0.05, "interrupted")])
def test_sigterm_mid_stream(start_pair, wecom: WeComClient, dify: DifySimulator, redis_url: str,  # type: ignore[no-untyped-def]
                            redis_client: redis.Redis, delay: float, outcome: str) -> None:
    a, b = start_pair(redis_url)  # SHUTDOWN_DRAIN_SECONDS=2
    answer = "优雅停机测试。" * 100  # 200 deltas: ~2 s at 0.01 (fits the drain), ~10 s at 0.05 (does not)
    dify.script("q", Script(answer=answer, delta_size=3, delay=delay))
    first = wecom.send(a.url, text_message("q"))
    assert first is not None
    sid = first["stream"]["id"]
    wait_for(lambda: wecom.poll(b.url, sid)["stream"]["content"] != "")
    a.signal(signal.SIGTERM)
    sent = time.monotonic()
    assert a.proc is not None
    a.proc.wait(timeout=15)
    assert time.monotonic() - sent <= 2 + 5 + 1  # drain budget + gunicorn's margin
    frame = wecom.poll(b.url, sid)["stream"]
    assert frame["finish"] is True
    if outcome == "done":
        assert frame["content"] == answer
    else:
        assert frame["content"].endswith(DEFAULTS.msg_interrupted)
        assert answer.startswith(frame["content"][: -len(DEFAULTS.msg_interrupted)].rstrip("\n"))


def test_redis_stopped_mid_stream_and_restarted(start_pair, wecom: WeComClient, dify: DifySimulator,  # type: ignore[no-untyped-def]
                                                redis_server: RedisServer) -> None:
    a, b = start_pair(redis_server.url)
    dify.script("long", Script(answer="Redis 故障测试。" * 100, delta_size=3, delay=0.03))
    first = wecom.send(a.url, text_message("long"))
    assert first is not None
    sid = first["stream"]["id"]
    wait_for(lambda: wecom.poll(b.url, sid)["stream"]["content"] != "")
    redis_server.stop()
    for i in range(6):  # polls and new messages while Redis is down, on both replicas
        url = (a.url, b.url)[i % 2]
        started = time.monotonic()
        reply = wecom.poll(url, sid) if i % 3 else wecom.send(url, text_message(f"down {i}"))
        assert time.monotonic() - started < 1.0
        assert reply is not None and reply["stream"]["finish"] is True
    for r in (a, b):
        assert requests.get(f"{r.url}/readyz", timeout=5).status_code == 503
    redis_server.start()
    assert wecom.poll(b.url, sid)["stream"]["content"] == DEFAULTS.msg_expired
    frames = wecom.converse([a.url, b.url], text_message("after"), interval=0.1)
    assert frames[-1]["stream"] == {"id": frames[0]["stream"]["id"], "finish": True, "content": "echo: after"}
    wait_for(lambda: requests.get(f"{a.url}/readyz", timeout=5).status_code == 200)


def test_every_key_has_a_ttl_after_full_conversations(start_pair, wecom: WeComClient, dify: DifySimulator,  # type: ignore[no-untyped-def]
                                                      responses: ResponseServer, redis_url: str,
                                                      redis_client: redis.Redis) -> None:
    a, b = start_pair(redis_url, STREAM_WINDOW_SECONDS="3")
    dify.script("slow", Script(answer="慢" * 60, delta_size=2, delay=0.15))
    dify.script("long", Script(answer="长" * 8000, delta_size=500))
    urls = [a.url, b.url]
    wecom.converse(urls, text_message("hello", userid="u1"), interval=0.1)
    wecom.converse(urls, text_message("again", userid="u1"), interval=0.1)
    wecom.converse(urls, text_message("@bot group", userid="u2", chattype="group", chatid="g1"), interval=0.1)
    wecom.converse(urls, text_message("slow", userid="u3", response_url=responses.url()), interval=0.3)
    wecom.converse(urls, text_message("long", userid="u4", response_url=responses.url()), interval=0.1)
    wecom.converse(urls, text_message("/stop", userid="u5"), interval=0.1)
    wait_for(lambda: len(responses.contents()) == 2)
    time.sleep(0.5)
    keys = list(redis_client.scan_iter("*"))
    assert len(keys) > 15
    kinds = {k.decode().split(":")[1] for k in keys}
    assert {"msg", "stream", "conv"} <= kinds
    for key in keys:
        assert redis_client.ttl(key) > 0, key

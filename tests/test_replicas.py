"""Process level: two real gunicorn replicas share one Redis; any replica answers any poll."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tests.conftest import AES_KEY, TOKEN
from tests.procs import Replica
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, WeComSigner, text_message

pytestmark = pytest.mark.process


def replica_env(redis_url: str, dify: DifySimulator, **extra: str) -> dict[str, str]:
    return {"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "REDIS_URL": redis_url,
            "DIFY_BASE_URL": dify.url, "DIFY_API_KEY": "app-test-key", "LOG_LEVEL": "WARNING", **extra}


@pytest.fixture
def replicas(redis_url: str, dify: DifySimulator, redis_client: redis.Redis) -> Iterator[list[Replica]]:
    env = replica_env(redis_url, dify)
    pair = [Replica(env), Replica(env)]
    try:
        for r in pair:
            r.start()
        yield pair
    finally:
        for r in pair:
            r.stop()


@pytest.fixture
def wecom() -> WeComClient:
    return WeComClient(WeComSigner(TOKEN, AES_KEY))


def test_polls_alternating_between_replicas(replicas: list[Replica], wecom: WeComClient,
                                            dify: DifySimulator) -> None:
    answer = "多副本流式回答，任意副本都能应答轮询。🚀 " * 30
    dify.script("两个副本", Script(answer=answer, delta_size=4, delay=0.01))
    a, b = replicas
    payload = text_message("两个副本", msgid="multi-replica-1")
    frames = wecom.converse([a.url, b.url], payload, interval=0.1)
    texts = [f["stream"]["content"] for f in frames]
    assert frames[-1]["stream"]["finish"] is True
    assert texts[-1] == answer
    for earlier, later in zip(texts, texts[1:], strict=False):
        assert later.startswith(earlier)
    streamed = {t for t, f in zip(texts, frames, strict=True) if t and not f["stream"]["finish"]}
    assert len(streamed) >= 2  # partial answers really reached polls before the end
    sid = frames[0]["stream"]["id"]
    assert {f["stream"]["id"] for f in frames} == {sid}
    again = wecom.send(b.url, payload)  # WeCom re-delivers the message to the other replica
    assert again is not None and again["stream"]["id"] == sid and again["stream"]["content"] == answer
    assert len(dify.chat_requests()) == 1


def test_readyz_follows_redis_and_livez_does_not(redis_server_pair: tuple[Replica, object]) -> None:
    replica, server = redis_server_pair
    assert requests.get(f"{replica.url}/readyz", timeout=5).status_code == 200
    server.stop()  # type: ignore[attr-defined]
    assert requests.get(f"{replica.url}/readyz", timeout=5).status_code == 503
    assert requests.get(f"{replica.url}/livez", timeout=5).status_code == 200


@pytest.fixture
def redis_server_pair(redis_server, dify: DifySimulator) -> Iterator[tuple[Replica, object]]:  # type: ignore[no-untyped-def]
    replica = Replica(replica_env(redis_server.url, dify)).start()
    yield replica, redis_server
    replica.stop()


def test_fifty_concurrent_conversations_through_two_replicas(replicas: list[Replica],
                                                             dify: DifySimulator) -> None:
    n = 50
    answers = {f"问题 {i}": f"回答 {i}：" + "内容" * (20 + i) for i in range(n)}
    for q, ans in answers.items():
        dify.script(q, Script(answer=ans, delta_size=3, delay=0.005))
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def converse(i: int, q: str) -> None:
        try:
            # like WeCom, send a callback again when its connection dropped before any reply (a keep-alive
            # connection the server closed as the client reused it: seen once with 50 threads on a busy machine)
            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=Retry(total=1, allowed_methods=None, status=0)))
            client = WeComClient(WeComSigner(TOKEN, AES_KEY), session=session)
            urls = [replicas[i % 2].url, replicas[(i + 1) % 2].url]
            start.wait()
            frames = client.converse(urls, text_message(q, userid=f"user{i}"), interval=0.2, max_polls=300)
            results[q] = [f["stream"]["content"] for f in frames if f["stream"]["finish"]]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=converse, args=(i, q)) for i, q in enumerate(answers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(results) == n
    for q, ans in answers.items():
        assert results[q] == [ans], q
    assert len(dify.chat_requests()) == n

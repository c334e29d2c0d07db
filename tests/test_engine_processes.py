"""Process level: the answer engine under a burst, and conversation order across replicas."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from tests.conftest import AES_KEY, TOKEN
from tests.procs import Replica
from tests.test_replicas import replica_env
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, WeComSigner, text_message

pytestmark = pytest.mark.process

QUEUED = "排队中，请稍候…"


def client() -> WeComClient:
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))
    return WeComClient(WeComSigner(TOKEN, AES_KEY), session=session)


@pytest.fixture
def burst_replica(redis_url: str, dify: DifySimulator, redis_client: redis.Redis) -> Iterator[Replica]:
    env = replica_env(redis_url, dify, ENGINE_CAPACITY="256", QUEUED_NOTE_AFTER_SECONDS="0.5", MSG_QUEUED=QUEUED)
    replica = Replica(env, workers=1, threads=16).start()
    yield replica
    replica.stop()


def test_burst_of_200_runs_all_at_once_on_one_worker(burst_replica: Replica, dify: DifySimulator) -> None:
    """200 messages at once: Dify sees 200 requests open together, and nobody is told to queue."""
    dify.script("burst", Script(answer="同时回答", stall=6.0))  # every answer holds its request open
    wecom = client()
    url = burst_replica.url
    with ThreadPoolExecutor(32) as pool:
        firsts = list(pool.map(lambda i: wecom.send(url, text_message("burst", userid=f"b{i}")), range(200)))
    sids = [f["stream"]["id"] for f in firsts if f is not None]
    assert len(sids) == 200 and len(set(sids)) == 200
    seen: dict[str, list[str]] = {sid: [] for sid in sids}
    stop = threading.Event()

    def poll_all() -> None:  # WeCom polls every stream about once a second
        while not stop.is_set():
            for sid in sids:
                if not seen[sid] or seen[sid][-1] != "同时回答":
                    frame = wecom.poll(url, sid)["stream"]
                    seen[sid].append(frame["content"])
            time.sleep(0.2)

    pollers = [threading.Thread(target=poll_all) for _ in range(2)]
    for t in pollers:
        t.start()
    deadline = time.monotonic() + 40
    while any(not v or v[-1] != "同时回答" for v in seen.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for t in pollers:
        t.join()
    assert all(v and v[-1] == "同时回答" for v in seen.values())  # every answer arrived
    assert not [sid for sid, v in seen.items() if QUEUED in v]  # capacity was free: nobody queued
    assert len(dify.chat_requests()) == 200
    assert dify.peak_open == 200  # all 200 streams were open at the same time


def test_queued_messages_of_a_conversation_run_in_arrival_order_across_replicas(
        redis_url: str, dify: DifySimulator, redis_client: redis.Redis) -> None:
    env = replica_env(redis_url, dify)
    replicas = [Replica(env), Replica(env)]
    try:
        for r in replicas:
            r.start()
        dify.script("first", Script(answer="第一条的回答", stall=1.5))
        wecom = client()
        queries = ["first"] + [f"next-{i}" for i in range(6)]
        replies: list[dict[str, Any] | None] = []
        for i, query in enumerate(queries):  # one user, alternating replicas, while the first runs
            replies.append(wecom.send(replicas[i % 2].url, text_message(query, userid="order")))
            time.sleep(0.05)
        for i, reply in enumerate(replies):
            assert reply is not None
            sid = reply["stream"]["id"]
            deadline = time.monotonic() + 30
            while not (frame := wecom.poll(replicas[i % 2].url, sid)["stream"])["finish"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            expected = "第一条的回答" if i == 0 else f"echo: {queries[i]}"
            assert frame["content"] == expected
        order = [r.json["query"] for r in dify.chat_requests()]
        assert order == queries  # the order they arrived in, whichever replica took each
    finally:
        for r in replicas:
            r.stop()

"""Redis Sentinel: the master dies mid-answer; the sentinels promote its replica; nothing is answered twice."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from config import Settings
from config.redis_url import parse_redis_url
from services.streams.connection import connect
from tests.procs import Replica
from tests.redis_topologies import SentinelGroup
from tests.response_server import ResponseServer
from tests.test_replicas import replica_env, wecom
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, text_message

pytestmark = pytest.mark.process

__all__ = ["wecom"]
BUSY = Settings.__dataclass_fields__["msg_busy"].default
INTERRUPTED = Settings.__dataclass_fields__["msg_interrupted"].default


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    started = SentinelGroup().start()
    yield started
    started.close()


def test_the_url_names_the_service_the_sentinels_and_the_passwords() -> None:
    target = parse_redis_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/bridge/2"
                             "?sentinel_password=other")
    assert (target.kind, target.service, target.db, target.password, target.sentinel_password) == \
        ("sentinel", "bridge", 2, "s3cret", "other")
    assert target.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert "s3cret" not in repr(target) and "other" not in repr(target)
    assert parse_redis_url("redis+sentinel://h:1/s?sentinel_password=a+b%2Bc%26").sentinel_password == "a+b+c&"
    assert parse_redis_url("rediss+cluster://:p%2F%3F@h:1?ssl_ca_certs=/ca.pem").ssl_ca_certs == "/ca.pem"
    assert parse_redis_url("rediss+cluster://:p%2F%3F@h:1").password == "p/?"
    for bad, says in [("redis+sentinel://h:1", "service name"), ("redis+sentinel://h:x/s", "port"),
                      ("redis+sentinel://h:1/s/db", "db a number"), ("redis+cluster://h:1/3", "database 0"),
                      ("redis+cluster://h", "host:port"), ("memcached://h:1", "redis+cluster://"),
                      ("redis+cluster://h:1?ssl_ca_certs=/x", "unknown parameter 'ssl_ca_certs'"),
                      ("redis+sentinel://h:1/s?password=x", "unknown parameter 'password'")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_redis_url(bad)


def test_a_sentinel_client_follows_the_promotion(group: SentinelGroup) -> None:
    client = connect(group.url, 0.4)
    assert isinstance(client, redis.Redis)
    client.set("before", "1", ex=60)
    assert client.wait(1, 2000) == 1  # replicated: asynchronous replication would otherwise race the kill
    old = group.master_port()
    group.master.kill()
    deadline = time.monotonic() + 30
    while group.master_port() == old:
        assert time.monotonic() < deadline, "the sentinels did not promote the replica"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.set("after", "1", ex=60)
            break
        except redis.RedisError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert client.get("before") == b"1"  # replicated before the master died


def test_the_master_dies_mid_answer(group: SentinelGroup, dify: DifySimulator, wecom: WeComClient,
                                    responses: ResponseServer) -> None:
    env = replica_env(group.url, dify, WECOM_RESPONSE_URL_HOSTS="127.0.0.1")
    replicas = [Replica(env).start(), Replica(env).start()]
    try:
        a, b = (r.url for r in replicas)
        answer = "哨兵切换时仍在生成的回答。" * 120
        dify.script("长回答", Script(answer=answer, delta_size=13, delay=0.06))  # about 7 s of deltas
        first = wecom.send(a, text_message("长回答", msgid="in-flight", response_url=responses.url()))
        assert first is not None
        sid = first["stream"]["id"]
        deadline = time.monotonic() + 10
        while not wecom.poll(b, sid)["stream"]["content"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        old = group.master_port()
        group.master.kill()
        killed = time.monotonic()
        slowest, outage = 0.0, []
        while group.master_port() == old:  # the failover: every callback is answered fast and clearly
            assert time.monotonic() - killed < 30, "the sentinels did not promote the replica"
            started = time.monotonic()
            frame = wecom.send(b, text_message("期间", userid=f"during-{len(outage)}"))
            slowest = max(slowest, time.monotonic() - started)
            assert frame is not None
            outage.append(frame["stream"])
            time.sleep(0.1)
        promoted = time.monotonic()
        assert slowest < 1.0, slowest
        assert any(s["content"] == BUSY and s["finish"] for s in outage)  # the outage was seen, and said
        assert all(s["content"] == BUSY or not s["finish"] for s in outage)

        while True:  # after the promotion, new answers stream again with no manual action
            frame = wecom.send(a, text_message("之后", userid="after"))
            assert frame is not None
            if frame["stream"]["content"] != BUSY:
                break
            assert time.monotonic() - promoted < 15, "answers did not come back after the promotion"
            time.sleep(0.1)
        frames = wecom.converse([b, a], text_message("恢复以后", userid="after-2"), interval=0.1)
        assert frames[-1]["stream"]["content"] == "echo: 恢复以后"

        deadline = time.monotonic() + 40
        while not (last := wecom.poll(a, sid)["stream"])["finish"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # the answer in flight completes, or ends with a clear note; it is never doubled
        assert last["content"] == answer or (INTERRUPTED in last["content"]
                                             and answer.startswith(last["content"].split(INTERRUPTED)[0].strip()))
        assert [r.json["query"] for r in dify.chat_requests()].count("长回答") == 1
        assert len(responses.contents()) <= 1
        print(f"failover: promoted after {promoted - killed:.1f} s; slowest callback meanwhile {slowest * 1000:.0f} ms;"
              f" {len(outage)} callbacks during it; the answer in flight "
              f"{'completed' if last['content'] == answer else 'ended with the note'}")
    finally:
        for r in replicas:
            r.stop()


def test_with_sentinel_a_claim_reaches_a_replica_before_wecom_hears_of_it(  # type: ignore[no-untyped-def]
        group: SentinelGroup, make_app, signer, redis_client: redis.Redis) -> None:
    from tests.helpers import InProcessWeCom

    def waits(client: redis.Redis) -> int:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    plain_before = waits(redis_client)
    for app in (make_app(redis_url=group.url), make_app()):
        wecom = InProcessWeCom(app.test_client(), signer)
        first = wecom.send(text_message("复制", msgid=f"sync-{uuid.uuid4().hex}"))
        assert first is not None
        wecom.until_finished(first["stream"]["id"])
    assert waits(group.master.client()) == 1  # the claim waited for the replica (WAIT 1), once
    assert waits(redis_client) == plain_before  # one server: nothing to wait for
    assert group.replica.client().keys("wecomdify:msg:sync-*")  # and the replica has it

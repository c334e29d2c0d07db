"""StreamWriter and Producer against a real Redis: lost replies, vanished streams."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import Settings
from services.errors import StoreUnavailable
from services.keys import Keys
from services.producer import StreamWriter
from services.stream_store import StreamStore
from tests.helpers import InProcessWeCom
from tests.test_stream_store import LoseReplies
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message

KEYS = Keys("p:")


@pytest.fixture
def no_retry_store(redis_url: str, redis_client: redis.Redis) -> StreamStore:
    return StreamStore(redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0)), KEYS)


def test_lost_reply_is_replayed_exactly_before_newer_text(no_retry_store: StreamStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = no_retry_store
    store.claim("m", "s", "owner", {})
    writer = StreamWriter(store, "s")
    writer.add("第一段")
    store.write("warm", 1, "")  # load the script so the next write goes out as EVALSHA
    loser = LoseReplies(monkeypatch, "EVALSHA")  # ...and its reply is lost after it ran
    with pytest.raises(StoreUnavailable):
        writer.flush()
    assert loser.lost == 1
    writer.add("第二段")  # arrives while the first write's fate is unknown
    writer.flush()
    snap = store.snapshot("s")
    assert snap is not None and snap.text == "第一段第二段" and snap.seq == 2


def test_write_that_never_reached_redis_is_kept(redis_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 0), socket_timeout=0.5)
    store = StreamStore(client, KEYS)
    store.claim("m", "s", "owner", {})
    writer = StreamWriter(store, "s")
    writer.add("kept")
    redis_server.proc.send_signal(19)  # SIGSTOP: Redis stops answering
    try:
        with pytest.raises(StoreUnavailable):
            writer.flush()
    finally:
        redis_server.proc.send_signal(18)  # SIGCONT
    writer.flush()
    snap = store.snapshot("s")
    assert snap is not None and snap.text == "kept"


def test_producer_abandons_dify_when_its_stream_vanishes(settings: Settings, redis_client: redis.Redis,
                                                         signer: WeComSigner, dify: DifySimulator) -> None:
    from app import create_app

    app = create_app(settings.replace(producer_threads=1, producer_backlog=5))
    wecom = InProcessWeCom(app.test_client(), signer)
    dify.script("endless", Script(answer="x" * 2000, delta_size=1, delay=0.01))  # ~20 s
    first = wecom.send(text_message("endless", userid="a"))
    assert first is not None
    sid = first["stream"]["id"]
    deadline = time.monotonic() + 5
    while not wecom.poll(sid)["stream"]["content"] and time.monotonic() < deadline:
        time.sleep(0.05)
    keys = Keys(settings.redis_key_prefix)
    redis_client.delete(keys.stream_meta(sid), keys.stream_text(sid))  # e.g. Redis lost its data
    started = time.monotonic()
    second = wecom.send(text_message("quick", userid="b"))  # needs the only producer thread
    assert second is not None
    frames = wecom.until_finished(second["stream"]["id"], timeout=10)
    assert frames[-1]["stream"]["content"] == "echo: quick"
    assert time.monotonic() - started < 5  # far less than the ~20 s the endless answer needed
    app.extensions["wecom_dify"].producer.drain(5)

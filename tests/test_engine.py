"""The engine, its keeper and StreamWriter against a real Redis: lost replies, vanished streams, turns."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import Settings
from services.errors import StoreUnavailable
from services.streams.keys import Keys
from services.streams.store import StreamStore
from services.streams.writer import StreamWriter
from tests.helpers import InProcessWeCom, wait_for
from tests.test_stream_store import LoseReplies
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message

KEYS = Keys("p:")


def bot_of(store: StreamStore) -> Any:
    """The part of a bot the keeper uses: its id and its store."""
    from types import SimpleNamespace

    return SimpleNamespace(id=store.keys.prefix, store=store)


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

    app = create_app(settings.replace(engine_capacity=1))
    wecom = InProcessWeCom(app.test_client(), signer)
    dify.script("endless", Script(answer="x" * 2000, delta_size=1, delay=0.01))  # ~20 s
    first = wecom.send(text_message("endless", userid="a"))
    assert first is not None
    sid = first["stream"]["id"]
    wecom.until_text(sid)
    keys = Keys(settings.redis_key_prefix)
    redis_client.delete(keys.stream_meta(sid), keys.stream_text(sid))  # e.g. Redis lost its data
    started = time.monotonic()
    engine = app.extensions["wecom_dify"].engine
    while engine.admitted and time.monotonic() - started < 5:  # the keeper notices within a tick
        time.sleep(0.02)
    second = wecom.send(text_message("quick", userid="b"))  # needs the engine's only slot
    assert second is not None
    frames = wecom.until_finished(second["stream"]["id"], timeout=10)
    assert frames[-1]["stream"]["content"] == "echo: quick"
    assert time.monotonic() - started < 5  # far less than the ~20 s the endless answer needed
    app.extensions["wecom_dify"].engine.drain(5)


def test_dify_error_labels_are_a_fixed_set() -> None:
    from services.dify import ERROR_LABELS, error_label
    from services.errors import DifyHTTPError, DifyStreamError, DifyTimeout

    assert error_label(DifyStreamError("completion_request_error", "x")) == "completion_request_error"
    assert error_label(DifyHTTPError(429, "too_many_requests", "x")) == "too_many_requests"
    assert error_label(DifyHTTPError(502, "http_502", "Bad Gateway")) == "http_502"
    assert error_label(DifyHTTPError(418, "http_418", "teapot")) == "http_4xx"
    assert error_label(DifyHTTPError(599, "http_599", "?")) == "http_5xx"
    assert error_label(DifyTimeout("x", code="idle_timeout")) == "idle_timeout"
    labels = {error_label(DifyStreamError(f"made_up_{i}", "x")) for i in range(1000)}
    assert labels == {"other"}  # whatever an upstream invents, the metric grows no new series
    assert all(error_label(DifyStreamError(code, "x")) == code for code in ERROR_LABELS)


def test_a_job_moves_only_along_its_life() -> None:
    from services.engine.job import IllegalTransition, Job, State

    job = Job(sid="s", bot=None, msgid="m", query="q", dify_user="u", scope="u:x")
    for state in (State.AUTHENTICATING, State.WAITING, State.RUNNING, State.SETTLED):
        job.move(state)
    assert job.settled
    with pytest.raises(IllegalTransition):
        job.move(State.SETTLED)  # settling twice is a bug, never a second release
    late = Job(sid="t", bot=None, msgid="m", query="q", dify_user="u", scope="u:x", state=State.RUNNING)
    with pytest.raises(IllegalTransition):
        late.move(State.WAITING)


class Broken:
    """A writer with a programming error in it: what the keeper must survive, and say so."""

    dirty = True

    def take_batch(self) -> None:
        raise KeyError("a bug")


def test_keeper_logs_a_rate_limited_traceback_counts_it_and_still_renews(
        redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from services import metrics
    from services.engine.job import Job, State
    from services.engine.keeper import TRACEBACK_EVERY, LeaseKeeper

    store = StreamStore(redis_client, KEYS, owner_lease_ms=60_000)
    keeper = LeaseKeeper([store], "me", renew_every=5.0, wait_limit=3300.0)
    store.claim("m", "s", "me", {})
    job = Job(sid="s", bot=bot_of(store), msgid="m", query="q", dify_user="u", scope="u:x", state=State.RUNNING)
    job.writer = Broken()  # type: ignore[assignment]
    keeper.track(job)
    redis_client.pexpire(KEYS.stream_owner("s"), 1000)
    before = metrics.KEEPER_ERRORS._value.get()
    with caplog.at_level(logging.ERROR, logger="services.engine.keeper"):
        for now in (100.0, 100.1, 100.2, 100.0 + TRACEBACK_EVERY + 0.1):
            keeper.tick(now)
    assert metrics.KEEPER_ERRORS._value.get() == before + 4  # every failure counted
    records = [r for r in caplog.records if r.message == "lease keeper step failed"]
    assert len(records) == 2  # ... but only one traceback per TRACEBACK_EVERY seconds
    assert all(r.exc_info and r.exc_info[0] is KeyError for r in records)  # the traceback, not just a name
    assert redis_client.pttl(KEYS.stream_owner("s")) > 50_000  # the flush bug did not stop the renewal


def test_keeper_hands_out_turns_and_reports_stops_and_losses(redis_client: redis.Redis) -> None:
    import asyncio

    from services.engine.job import Job, State
    from services.engine.keeper import LeaseKeeper

    store = StreamStore(redis_client, KEYS, owner_lease_ms=60_000)
    keeper = LeaseKeeper([store], "me", renew_every=5.0, wait_limit=3300.0)
    loop = asyncio.new_event_loop()
    try:
        jobs = {}
        for name, state in (("a", State.RUNNING), ("b", State.WAITING), ("c", State.WAITING)):
            store.claim(f"m{name}", name, "me", {}, scope="u:1")
            jobs[name] = Job(sid=name, bot=bot_of(store), msgid=f"m{name}", query="q", dify_user="u", scope="u:1",
                             state=state, created=0.0)
            keeper.track(jobs[name])
        jobs["b"].turn, jobs["c"].turn = loop.create_future(), loop.create_future()
        report = keeper.tick(0.0)
        assert report.turns == [] and report.finished_elsewhere == [] and report.lost == []
        store.queue_leave("u:1", "a")
        keeper.untrack(jobs["a"])
        assert keeper.tick(0.1).turns == [jobs["b"]]  # b arrived first, so b goes first; c waits
        jobs["b"].turn.set_result(True)
        jobs["b"].state = State.RUNNING
        store.set_status("b", "done", "stopped")  # /stop, answered by another replica
        redis_client.delete(KEYS.stream_owner("c"))  # c's lease lapsed while Redis stalled
        assert keeper.tick(1.0).finished_elsewhere == []  # the renewal is not due yet (injected time)
        report = keeper.tick(5.1)
        assert report.finished_elsewhere == [jobs["b"]] and report.lost == []
        assert redis_client.get(KEYS.stream_owner("c")) == b"me"  # c still lives: its lease was taken again
        redis_client.delete(KEYS.stream_meta("c"))  # c's stream is gone (e.g. Redis lost its data)
        assert keeper.tick(10.2).lost == [jobs["c"]]
        assert keeper.tick(5000.0).expired == [jobs["c"]]  # waited longer than its user can be reached
    finally:
        loop.close()


def test_sse_decoder_is_linear_in_the_number_of_deltas() -> None:
    """40 000 deltas used to take 2.5 s (``text +=``): ten times the deltas must cost about ten times."""
    import json

    from services.dify.events import ChatEventDecoder

    def cost(n: int) -> float:
        frames = [json.dumps({"event": "message", "answer": "字"}) for _ in range(n)]
        best = float("inf")
        for _ in range(3):
            decoder = ChatEventDecoder()
            started = time.process_time()
            for frame in frames:
                decoder.handle(frame)
            best = min(best, time.process_time() - started)
            assert decoder.text == "字" * n
        return best

    assert cost(40_000) < 40 * cost(4_000)  # linear: ~10x; quadratic: ~100x


def two_apps(settings: Settings, apps: list[Any], **changes: Any) -> list[Any]:
    """Two replicas of the bridge in this process, on one Redis (drained by the ``apps`` fixture)."""
    from tests.test_hardening import build

    return [build(apps, settings, **changes) for _ in range(2)]


def test_stop_sent_to_another_replica_stops_dify(settings: Settings, redis_client: redis.Redis, signer: WeComSigner,
                                                 dify: DifySimulator, apps: list[Any]) -> None:
    a, b = two_apps(settings, apps)
    dify.script("long", Script(answer="长" * 600, delta_size=2, delay=0.02))  # ~6 s
    on_a, on_b = InProcessWeCom(a.test_client(), signer), InProcessWeCom(b.test_client(), signer)
    first = on_a.send(text_message("long", userid="s"))
    assert first is not None
    on_a.until_text(first["stream"]["id"])
    ack = on_b.send(text_message("/stop", userid="s"))  # the other replica takes the /stop
    assert ack is not None and ack["stream"]["content"] == settings.msg_stop_ack
    stopped_at = time.monotonic()
    while not dify.stop_requests():
        assert time.monotonic() - stopped_at < 2, "replica A never stopped Dify"  # not the 5 s renewal
        time.sleep(0.02)
    assert dify.stop_requests()[0].json == {"user": "wecom:s"}
    engine = a.extensions["wecom_dify"].engine
    while engine.admitted:
        assert time.monotonic() - stopped_at < 5
        time.sleep(0.02)


def test_redis_pause_longer_than_the_lease_does_not_kill_the_answer(
        settings: Settings, signer: WeComSigner, dify: DifySimulator, redis_server: Any, apps: list[Any]) -> None:
    import signal

    answer = "暂停之后继续的回答。" * 30
    dify.script("pause", Script(answer=answer, delta_size=6, delay=0.12))  # ~6 s: still streaming after the pause
    [app, _] = two_apps(settings, apps, redis_url=redis_server.url, producer_lease_seconds=2.0)
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("pause"))
    assert first is not None
    time.sleep(0.5)
    redis_server.proc.send_signal(signal.SIGSTOP)  # 3 s: the 2 s owner lease lapses meanwhile
    time.sleep(3.0)
    redis_server.proc.send_signal(signal.SIGCONT)
    time.sleep(0.6)  # the keeper takes its lapsed lease again before WeCom's next poll
    assert wecom.until_finished(first["stream"]["id"])[-1]["stream"]["content"] == answer


def test_redis_refusing_writes_for_a_while_does_not_cut_the_answer(
        settings: Settings, signer: WeComSigner, dify: DifySimulator, redis_server: Any, apps: list[Any]) -> None:
    answer = "内存满了一会儿之后完整的回答。" * 20
    dify.script("oom", Script(answer=answer, delta_size=6, delay=0.05))  # ~2.5 s
    [app, _] = two_apps(settings, apps, redis_url=redis_server.url)
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("oom"))
    assert first is not None
    admin = redis.Redis.from_url(redis_server.url)
    time.sleep(0.5)
    admin.config_set("maxmemory", "1")  # writes are refused with OOM errors for a second
    time.sleep(1.0)
    admin.config_set("maxmemory", "0")
    admin.close()
    assert wecom.until_finished(first["stream"]["id"])[-1]["stream"]["content"] == answer


def test_drain_right_after_a_burst_settles_every_job(settings: Settings, redis_client: redis.Redis,
                                                      signer: WeComSigner, dify: DifySimulator) -> None:
    from app import create_app

    app = create_app(settings)
    wecom = InProcessWeCom(app.test_client(), signer)
    dify.script("slow", Script(answer="慢" * 100, delta_size=1, delay=0.05))
    firsts = [wecom.send(text_message("slow", userid=f"d{i}")) for i in range(40)]
    engine = app.extensions["wecom_dify"].engine
    engine.drain(0)  # some jobs are still queued on the loop, some running
    assert engine.admitted == 0 and engine.keeper.jobs() == []
    for first in firsts:
        assert first is not None
        frame = wecom.poll(first["stream"]["id"])["stream"]
        assert frame["finish"] and frame["content"].endswith(settings.msg_interrupted)


def test_a_job_cancelled_before_its_first_step_still_settles(settings: Settings, redis_client: redis.Redis,
                                                            signer: WeComSigner, apps: list[Any]) -> None:
    from services.engine import Job, Outcome

    [app, _] = two_apps(settings, apps)
    engine = app.extensions["wecom_dify"].engine
    engine.start()
    job = Job(sid="f" * 32, bot=engine.bots["default"], msgid="first-step", query="q", dify_user="wecom:x", scope="u:x")
    engine._claim(job, queue=True)
    assert engine.capacity.take("default")

    def launch_and_cancel() -> None:  # the drain can run in the same loop pass as the launch
        engine._launch(job)
        engine._cancel(job, Outcome.INTERRUPTED)

    engine._thread.loop.call_soon_threadsafe(launch_and_cancel)
    wait_for(lambda: engine.admitted == 0)
    assert engine.keeper.jobs() == []
    frame = InProcessWeCom(app.test_client(), signer).poll(job.sid)["stream"]
    assert frame == {"id": job.sid, "finish": True, "content": settings.msg_interrupted}
    assert redis_client.llen(engine.bots["default"].store.keys.queue("u:x")) == 0  # its ticket is gone too


def test_a_busy_poll_on_another_replica_brings_the_whole_answer_once(
        settings: Settings, signer: WeComSigner, dify: DifySimulator, redis_server: Any, apps: list[Any]) -> None:
    import signal

    from tests.response_server import ResponseServer

    answer = "另一个副本答了忙之后的完整回答"
    dify.script("quiet", Script(answer=answer, stall=2.0))  # the owner touches no Redis while Dify thinks
    a, b = two_apps(settings, apps, redis_url=redis_server.url, producer_lease_seconds=60.0)
    b.extensions["wecom_dify"].engine.start()  # as gunicorn's post_worker_init does on every worker
    responses = ResponseServer()
    try:
        first = InProcessWeCom(a.test_client(), signer).send(text_message("quiet", response_url=responses.url()))
        assert first is not None
        time.sleep(0.5)
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:  # WeCom's poll lands on replica B while Redis is away: "busy" ends the stream for the user
            frame = InProcessWeCom(b.test_client(), signer).poll(first["stream"]["id"])["stream"]
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert frame["finish"] and frame["content"] == settings.msg_busy
        wait_for(lambda: responses.contents(), timeout=10)  # the owner never saw Redis trouble itself
        time.sleep(0.5)
        assert responses.contents() == [answer]  # the whole answer, once
    finally:
        responses.close()


def test_a_refused_message_gives_its_ticket_back(settings: Settings, redis_client: redis.Redis, signer: WeComSigner,
                                                 dify: DifySimulator, apps: list[Any]) -> None:
    [app, _] = two_apps(settings, apps, engine_capacity=1)
    dify.script("hold", Script(answer="held", stall=1.5))
    wecom = InProcessWeCom(app.test_client(), signer)
    a = wecom.send(text_message("hold", userid="q"))
    b = wecom.send(text_message("refused", userid="q"))  # the engine is full: busy
    assert a and b and b["stream"]["content"] == settings.msg_busy
    queue = app.extensions["wecom_dify"].bots["default"].store.keys.queue("u:q")
    assert redis_client.lrange(queue, 0, -1) == [a["stream"]["id"].encode()]  # the next message is not stuck


def test_an_answer_lets_go_of_everything_it_held(settings: Settings, redis_client: redis.Redis, signer: WeComSigner,
                                                  dify: DifySimulator, apps: list[Any]) -> None:
    [app, _] = two_apps(settings, apps)
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("hello", userid="g"))
    assert first is not None
    wecom.until_finished(first["stream"]["id"])
    engine = app.extensions["wecom_dify"].engine
    wait_for(lambda: engine.admitted == 0)
    keys = engine.bots["default"].store.keys
    for key in (keys.stream_owner(first["stream"]["id"]), keys.active("u:g"), keys.queue("u:g")):
        assert not redis_client.exists(key), key


def test_a_stream_taken_from_its_owner_is_abandoned_without_stopping_dify(
        settings: Settings, redis_client: redis.Redis, signer: WeComSigner, dify: DifySimulator,
        apps: list[Any]) -> None:
    [app, _] = two_apps(settings, apps, producer_lease_seconds=2.0)
    dify.script("long", Script(answer="长" * 300, delta_size=2, delay=0.03))  # ~4.5 s
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("long", userid="t"))
    assert first is not None
    wecom.until_text(first["stream"]["id"])
    engine = app.extensions["wecom_dify"].engine
    redis_client.set(engine.bots["default"].store.keys.stream_owner(first["stream"]["id"]), "another-worker", px=60_000)
    wait_for(lambda: engine.admitted == 0, timeout=3)  # the next renewal finds it is no longer ours
    assert dify.stop_requests() == []  # not a /stop: the stream's new owner decides about Dify


def test_a_keeper_whose_write_fails_marks_the_job_and_sends_it_again(redis_server: Any) -> None:
    from services.engine.job import Job, State
    from services.engine.keeper import LeaseKeeper

    store = StreamStore(redis.Redis.from_url(redis_server.url, socket_timeout=0.3,
                                             retry=Retry(NoBackoff(), 0)), KEYS)
    store.claim("m", "s", "me", {})
    job = Job(sid="s", bot=bot_of(store), msgid="m", query="q", dify_user="u", scope="u:x", state=State.RUNNING)
    job.writer = StreamWriter(store, "s")
    job.writer.add("待写")
    keeper = LeaseKeeper([store], "me", renew_every=100.0, wait_limit=3300.0)
    keeper.track(job)
    redis_server.stop()  # Redis is gone: the batch fails
    keeper.tick(0.0)
    assert job.degraded
    assert job.writer.take_batch() == (("s", 1, "待写", False), None)  # the same write goes out again, not lost
    store.redis.close()


def test_keeper_writes_and_renews_each_bot_in_its_own_namespace(redis_client: redis.Redis) -> None:
    from services.engine.job import Job, State
    from services.engine.keeper import LeaseKeeper

    stores = [StreamStore(redis_client, Keys(f"p:{bot}:"), owner_lease_ms=60_000) for bot in ("hr", "it")]
    keeper = LeaseKeeper(stores, "me", renew_every=5.0, wait_limit=3300.0)
    for store in stores:
        store.claim("m", "same-sid", "me", {})  # the same ids in both bots: only the bot differs
        job = Job(sid="same-sid", bot=bot_of(store), msgid="m", query="q", dify_user="u", scope="u:x",
                  state=State.RUNNING)
        job.writer = StreamWriter(store, "same-sid")
        job.writer.add(f"{store.keys.prefix} 的回答")
        keeper.track(job)
        redis_client.pexpire(store.keys.stream_owner("same-sid"), 1000)
    keeper.tick(100.0)
    for store in stores:
        assert redis_client.get(store.keys.stream_text("same-sid")) == f"{store.keys.prefix} 的回答".encode()
        assert redis_client.pttl(store.keys.stream_owner("same-sid")) > 50_000

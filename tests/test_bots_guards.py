"""Guards for the many-bots logic that mutation testing found unguarded: limits of the bots file,
per-bot texts, capacity, slow-I/O threads, keeper steps, metrics labels and log context."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from flask import Flask, Response
from prometheus_client import REGISTRY

from app import create_app
from config import ConfigError, Settings, parse_bots
from config.bots import MAX_BOTS
from services import metrics
from services.bot import DifyHealth
from services.engine import Job
from services.engine.capacity import Capacity
from services.engine.engine import IO_THREADS
from services.engine.job import State
from services.engine.keeper import LeaseKeeper
from services.streams.keys import Keys
from services.streams.store import StreamStore
from tests import test_bots
from tests.conftest import AES_KEY, TOKEN
from tests.helpers import contents, wait_for
from tests.test_auth import seed_cache
from tests.test_bots import CREDENTIALS, environ, wecom
from tests.test_engine import bot_of
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import stream_refresh, text_message

GLOBAL = Settings(wecom_token=TOKEN, wecom_encoding_aes_key=AES_KEY, dify_base_url="http://127.0.0.1:9/v1",
                  dify_api_key="app-global", bots_file="bots.toml")
difys = test_bots.difys  # fixtures shared with tests.test_bots
log_lines = test_bots.log_lines
TEXTS = ("busy", "stop_ack", "nothing_to_stop", "stopped", "interrupted", "dify_failed", "expired")


# -- the bots file ------------------------------------------------------------------------------------


def test_the_largest_allowed_number_of_bots_loads() -> None:
    most = "".join(f'[bots.b{i}]\nwecom_token = "t{i}"\n' for i in range(MAX_BOTS))
    assert len(parse_bots(most, GLOBAL.replace(engine_capacity=MAX_BOTS), {})) == MAX_BOTS


def test_a_bot_name_is_a_string_of_at_most_64_characters() -> None:
    assert parse_bots(f'[bots.hr]\nname = "{"名" * 64}"\n', GLOBAL, {})["hr"].name == "名" * 64
    for bad in (f'"{"名" * 65}"', "3", '["HR"]'):
        with pytest.raises(ConfigError) as caught:
            parse_bots(f"[bots.hr]\nname = {bad}\n", GLOBAL, {})
        assert caught.value.variable == "bots.hr.name", bad


def test_capacity_share_is_a_number_up_to_and_including_one() -> None:
    whole = parse_bots("[bots.hr]\ncapacity_share = 1\n", GLOBAL, {})["hr"].capacity_share
    assert whole == 1.0 and isinstance(whole, float)
    for bad in ("true", "1.5", '"0.5"', "nan", "inf"):
        with pytest.raises(ConfigError) as caught:
            parse_bots(f"[bots.hr]\ncapacity_share = {bad}\n", GLOBAL, {})
        assert caught.value.variable == "bots.hr.capacity_share", bad


def test_shares_adding_up_to_exactly_one_are_accepted() -> None:
    bots = parse_bots('[bots.a]\ncapacity_share = 0.6\n[bots.b]\ncapacity_share = 0.4\nwecom_token = "other"\n',
                      GLOBAL, {})
    assert (bots["a"].capacity_share, bots["b"].capacity_share) == (0.6, 0.4)


def test_bots_without_a_share_split_what_the_explicit_shares_leave() -> None:
    text = '[bots.a]\ncapacity_share = 0.8\n[bots.b]\nwecom_token = "tb"\n[bots.c]\nwecom_token = "tc"\n'
    bots = parse_bots(text, GLOBAL, {})
    assert bots["b"].capacity_share == pytest.approx(0.1) and bots["c"].capacity_share == pytest.approx(0.1)
    even = parse_bots('[bots.a]\n[bots.b]\nwecom_token = "tb"\n', GLOBAL, {})
    assert even["a"].capacity_share == even["b"].capacity_share == 0.25  # half of the capacity, split evenly


def test_a_global_value_the_bot_cannot_use_is_blamed_on_the_bots_key() -> None:
    needs_mysql = GLOBAL.replace(auth_mode="mysql", dify_auth_source="user_token",
                                 auth_service_url="http://127.0.0.1:9", auth_service_secret="s")
    with pytest.raises(ConfigError) as caught:
        parse_bots('[bots.hr]\nauth_mode = "none"\n', needs_mysql, {})
    assert caught.value.variable == "bots.hr.dify_auth_source"
    assert caught.value.problem == "user_token needs AUTH_MODE=mysql (from DIFY_AUTH_SOURCE)"


def test_a_reference_to_an_empty_variable_keeps_the_error_readable() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_bots('[bots.hr]\nwecom_token = "${EMPTY}"\n', GLOBAL, {"EMPTY": ""})
    assert (caught.value.variable, caught.value.problem) == ("bots.hr.wecom_token", "is required but empty")


def test_a_secret_containing_another_is_hidden_whole() -> None:
    short, long = "secretpart", "secretpart-and-the-rest"
    text = '[bots.hr]\ndify_api_key = "${SHORT}"\ndify_inputs_from_user = "${LONG}"\n'
    with pytest.raises(ConfigError) as caught:
        parse_bots(text, GLOBAL, {"SHORT": short, "LONG": long})
    assert caught.value.variable == "bots.hr.dify_inputs_from_user"
    assert "${LONG}" in caught.value.problem and "-and-the-rest" not in str(caught.value)


# -- capacity -------------------------------------------------------------------------------------------


def test_capacity_publishes_each_bots_reserve_and_its_admitted_answers() -> None:
    capacity = Capacity(10, {"guard-a": 0.25, "guard-b": 0.5})
    assert metrics.ENGINE_RESERVED.labels("guard-a")._value.get() == 2
    assert metrics.ENGINE_RESERVED.labels("guard-b")._value.get() == 5
    before = metrics.ENGINE_JOBS.labels("guard-a")._value.get()
    assert capacity.take("guard-a") and capacity.take("guard-a")
    assert metrics.ENGINE_JOBS.labels("guard-a")._value.get() == before + 2
    capacity.give_back("guard-a")
    assert metrics.ENGINE_JOBS.labels("guard-a")._value.get() == before + 1


# -- the lease keeper --------------------------------------------------------------------------------------


def test_keeper_hands_out_turns_from_each_bots_own_queue(redis_client: redis.Redis) -> None:
    import asyncio

    stores = {bot: StreamStore(redis_client, Keys(f"p:{bot}:"), owner_lease_ms=60_000) for bot in ("hr", "it")}
    keeper = LeaseKeeper(list(stores.values()), "me", renew_every=5.0, wait_limit=3300.0)
    loop = asyncio.new_event_loop()
    try:
        jobs: dict[str, Job] = {}
        for bot, store in stores.items():
            for name, state in (("a", State.RUNNING), ("b", State.WAITING)):
                sid = f"{bot}-{name}"
                store.claim(f"m{name}", sid, "me", {}, scope="u:1")  # the same conversation in both bots
                jobs[sid] = Job(sid=sid, bot=bot_of(store), msgid=f"m{name}", query="q", dify_user="u",
                                scope="u:1", state=state, created=0.0)
                keeper.track(jobs[sid])
            jobs[f"{bot}-b"].turn = loop.create_future()
        assert keeper.tick(0.0).turns == []  # each bot's a still runs
        for bot, store in stores.items():
            store.queue_leave("u:1", f"{bot}-a")
            keeper.untrack(jobs[f"{bot}-a"])
        assert sorted(job.sid for job in keeper.tick(0.1).turns) == ["hr-b", "it-b"]
    finally:
        loop.close()


# -- three bots in one app ------------------------------------------------------------------------------------


def guarded_file(difys: dict[str, DifySimulator]) -> str:
    """The bots of tests.test_bots, each with its own texts; hr with a small share and group conversations."""
    parts = []
    for bot in CREDENTIALS:
        up = bot.upper()
        extra = 'capacity_share = 0.1\nconversation_scope = "chat"\n' if bot == "hr" else ""
        texts = "".join(f'{key} = "{bot}: {key}"\n' for key in TEXTS)
        parts.append(f'[bots.{bot}]\nwecom_token = "${{TOKEN_{up}}}"\nwecom_encoding_aes_key = "${{AES_{up}}}"\n'
                     f'dify_base_url = "{difys[bot].url}"\ndify_api_key = "${{DIFY_{up}}}"\n{extra}'
                     f"[bots.{bot}.messages]\n{texts}")
    return "\n".join(parts)


@pytest.fixture
def three(settings: Settings, redis_client: redis.Redis, difys: dict[str, DifySimulator]) -> Iterator[Flask]:
    """An app serving the three bots, each with its own texts."""
    for sim in difys.values():
        sim.reset()
    base = settings.replace(bots_file="bots.toml", engine_capacity=20)
    app = create_app(base, parse_bots(guarded_file(difys), base, environ()))
    yield app
    app.extensions["wecom_dify"].engine.drain(5)


def start(app: Flask, bot: str, text: str, **fields: str) -> str:
    """Send ``text`` to ``bot``; return the stream id of the answer it started."""
    first = wecom(app, bot).send(text_message(text, **fields))
    assert first is not None and not first["stream"]["finish"], first
    return str(first["stream"]["id"])


def test_each_bot_takes_and_gives_back_its_own_capacity(three: Flask, difys: dict[str, DifySimulator]) -> None:
    engine = three.extensions["wecom_dify"].engine
    assert engine.capacity.reserved == {"hr": 2, "it": 5, "default": 5}  # hr's own share, the others' default
    difys["it"].script("慢", Script(answer="慢慢地回答" * 10, delta_size=2, delay=0.02))
    sid = start(three, "it", "慢")
    assert (engine.capacity.held("it"), engine.capacity.held("hr"), engine.capacity.held("default")) == (1, 0, 0)
    wecom(three, "it").until_finished(sid)
    wait_for(lambda: engine.admitted == 0, timeout=5)
    assert (engine.capacity.held("it"), engine.capacity.held("hr"), engine.capacity.held("default")) == (0, 0, 0)


def test_a_refused_message_ends_with_its_bots_busy_text(three: Flask) -> None:
    engine = three.extensions["wecom_dify"].engine
    before = metrics.ENGINE_REJECTED.labels("it")._value.get()
    engine.begin_shutdown()  # refuses new work, as a full engine does
    reply = wecom(three, "it").send(text_message("你好"))
    assert reply is not None and reply["stream"]["finish"]
    assert wecom(three, "it").poll(reply["stream"]["id"])["stream"]["content"] == "it: busy"  # what Redis holds
    assert metrics.ENGINE_REJECTED.labels("it")._value.get() == before + 1


def test_stop_answers_with_its_bots_texts(three: Flask, difys: dict[str, DifySimulator]) -> None:
    it = wecom(three, "it")
    reply = it.send(text_message("/stop", userid="wangwu"))
    assert reply is not None and reply["stream"]["content"] == "it: nothing_to_stop"
    difys["it"].script("长", Script(answer="很长的回答" * 200, delta_size=2, delay=0.02))
    sid = start(three, "it", "长", userid="wangwu")
    it.until_text(sid)
    reply = it.send(text_message("/stop", userid="wangwu"))
    assert reply is not None and reply["stream"]["content"] == "it: stop_ack"
    assert contents(it.until_finished(sid))[-1].endswith("\n\nit: stopped")


def test_an_answer_interrupted_by_the_drain_ends_with_its_bots_text(three: Flask,
                                                                     difys: dict[str, DifySimulator]) -> None:
    difys["it"].script("长", Script(answer="很长的回答" * 200, delta_size=2, delay=0.02))
    sid = start(three, "it", "长")
    wecom(three, "it").until_text(sid)
    three.extensions["wecom_dify"].engine.drain(0)  # no time left: the running answer is interrupted
    assert contents(wecom(three, "it").until_finished(sid))[-1].endswith("\n\nit: interrupted")


def test_dify_failures_use_the_bots_text_and_every_metric_names_the_bot(three: Flask,
                                                                        difys: dict[str, DifySimulator]) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(f"wecom_dify_{name}", labels) or 0.0

    names = (("dify_errors_total", {"bot": "it", "code": "provider_quota_exceeded"}),
             ("streams_ended_total", {"bot": "it", "reason": "failed"}),
             ("stream_seconds_count", {"bot": "it", "status": "failed"}),
             ("streams_ended_total", {"bot": "hr", "reason": "done"}),
             ("first_text_seconds_count", {"bot": "hr"}))
    before = [sample(name, **labels) for name, labels in names]
    difys["it"].script("坏", Script(answer="x", error_after=0, error_code="provider_quota_exceeded"))
    sid = start(three, "it", "坏")
    assert contents(wecom(three, "it").until_finished(sid))[-1] == "it: dify_failed"
    sid = start(three, "hr", "好")
    wecom(three, "hr").until_finished(sid)
    wait_for(lambda: three.extensions["wecom_dify"].engine.admitted == 0, timeout=5)
    assert [sample(name, **labels) - b for (name, labels), b in zip(names, before, strict=True)] == [1] * len(names)


def test_a_group_conversation_is_the_bots_own_dify_user(three: Flask, difys: dict[str, DifySimulator]) -> None:
    sid = start(three, "hr", "大家好", chattype="group", chatid="grp1")
    wecom(three, "hr").until_finished(sid)
    assert [r.json["user"] for r in difys["hr"].chat_requests()] == ["wecom-group:hr:grp1"]


def test_the_keeper_records_busy_polls_of_every_bot(three: Flask, redis_client: redis.Redis) -> None:
    bridge = three.extensions["wecom_dify"]
    for i, bot in enumerate(bridge.bots.values()):
        sid = f"{i:032x}"
        bot.store.claim(f"m{i}", sid, "someone", {})
        bot.store.note_busy_shown(sid)  # a poll answered "busy" while Redis was away
    bridge.engine.keeper.tick(time.time())
    for i, bot in enumerate(bridge.bots.values()):
        assert redis_client.hget(bot.store.keys.stream_meta(f"{i:032x}"), "busy") is not None, bot.id


def test_a_bot_may_hold_all_but_one_slow_io_thread_per_other_bot(three: Flask) -> None:
    bridge = three.extensions["wecom_dify"]
    engine = bridge.engine
    engine.start()
    most = IO_THREADS - (len(bridge.bots) - 1)
    release, lock = threading.Event(), threading.Lock()
    running = [0]

    def hang() -> bool:
        with lock:
            running[0] += 1
        return release.wait(30)

    jobs = [Job(sid=f"{i:032x}", bot=bridge.bots["hr"], msgid=f"m{i}", query="q", dify_user="u", scope="u:x")
            for i in range(most + 1)]
    try:
        futures = [engine._thread.submit(engine.io(job, hang)) for job in jobs]
        wait_for(lambda: running[0] >= most, timeout=5)  # e.g. a hung auth API
        time.sleep(0.3)
        assert running[0] == most  # the last one waits for one of them
    finally:
        release.set()
    assert all(f.result(timeout=5) is True for f in futures)


def test_many_bots_each_keep_a_slow_io_thread(settings: Settings, redis_client: redis.Redis) -> None:
    count = IO_THREADS + 2
    text = "".join(f'[bots.b{i}]\nwecom_token = "t{i}"\n' for i in range(count))
    base = settings.replace(bots_file="bots.toml", engine_capacity=count)
    app = create_app(base, parse_bots(text, base, {}))
    bridge = app.extensions["wecom_dify"]
    try:
        bridge.engine.start()
        job = Job(sid="f" * 32, bot=bridge.bots[f"b{count - 1}"], msgid="m", query="q", dify_user="u", scope="u:y")
        assert bridge.engine._thread.submit(bridge.engine.io(job, lambda: "answered")).result(timeout=5) == "answered"
    finally:
        bridge.engine.drain(2)


# -- routes, logs and metrics ----------------------------------------------------------------------------------------


def test_an_unknown_bot_is_counted(three: Flask) -> None:
    before = metrics.UNKNOWN_BOT._value.get()
    assert three.test_client().post("/wecom/callback/nope", data=b"x").status_code == 404
    assert metrics.UNKNOWN_BOT._value.get() == before + 1


def test_the_short_url_logs_as_the_bot_default(three: Flask, log_lines: io.StringIO) -> None:
    first = wecom(three, "default", path="/wecom/callback").send(text_message("你好"))
    assert first is not None
    sid = first["stream"]["id"]
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert [line.get("bot") for line in lines if line["event"] == "stream started" and line.get("sid") == sid] == [
        "default"]


def test_an_unknown_bot_id_never_names_a_log_line(three: Flask, log_lines: io.StringIO) -> None:
    @three.after_request
    def note(response: Response) -> Response:
        logging.getLogger("tests").warning("request done")
        return response

    http = three.test_client()
    assert http.post("/wecom/callback/nope", data=b"x").status_code == 404
    wecom(three, "hr").send(stream_refresh("f" * 32))
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert [line.get("bot") for line in lines if line["event"] == "request done"] == [None, "hr"]


def test_the_engine_names_the_job_s_bot_whoever_admits_it(three: Flask, difys: dict[str, DifySimulator],
                                                           log_lines: io.StringIO) -> None:
    difys["it"].script("坏", Script(answer="x", error_after=0, error_code="provider_quota_exceeded"))
    bridge = three.extensions["wecom_dify"]
    reply, outcome = bridge.handlers["it"].handle(text_message("坏"))  # not from a request of the bot
    assert outcome == "started" and reply is not None
    wait_for(lambda: bridge.engine.admitted == 0, timeout=5)
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert [line.get("bot") for line in lines if line["event"] == "dify failed"] == ["it"]


def test_deliveries_and_logins_count_under_their_bot(settings: Settings, redis_client: redis.Redis) -> None:
    base = settings.replace(bots_file="bots.toml", auth_service_url="http://127.0.0.1:9", auth_service_secret="s")
    app = create_app(base, parse_bots('[bots.hr]\nauth_mode = "mysql"\n', base, {}))
    hr = app.extensions["wecom_dify"].bots["hr"]
    try:
        refused = metrics.RESPONSE_URL.labels("hr", "refused")._value.get()
        assert not hr.delivery.send("https://elsewhere.example/response", "答案", "")
        assert metrics.RESPONSE_URL.labels("hr", "refused")._value.get() == refused + 1
        hits = metrics.AUTH.labels("hr", "hit")._value.get()
        seed_cache(redis_client, "zhangsan", "tok-1", {"name": "张三"})
        assert hr.auth is not None and hr.auth.authenticate("zhangsan").token == "tok-1"
        assert metrics.AUTH.labels("hr", "hit")._value.get() == hits + 1
    finally:
        app.extensions["wecom_dify"].engine.drain(2)


# -- Dify health ----------------------------------------------------------------------------------------------------


def test_dify_health_says_how_long_ago_it_last_failed() -> None:
    now = [1000.0]
    health = DifyHealth(clock=lambda: now[0])
    assert health.describe() == "unknown"
    health.record("timeout")
    now[0] = 1042.5
    assert health.describe() == "failing: timeout (42 s ago)"
    now[0] = 990.0  # the clock stepped back
    assert health.describe() == "failing: timeout (0 s ago)"
    health.record("ok")
    assert health.describe() == "ok"

"""Process level: three bots, each with its own Dify app, served by two gunicorn replicas on one Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import AES_KEY, TOKEN
from tests.helpers import wait_for
from tests.procs import Replica
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, WeComSigner, stream_refresh, text_message

pytestmark = pytest.mark.process

CREDENTIALS = {  # bot id → (token, EncodingAESKey, Dify API key)
    "hr": ("hrToken0001", "H" * 42 + "A", "app-hr-key"),
    "it": ("itToken0002", "ITkey" * 8 + "abc", "app-it-key"),
    "sales": (TOKEN, AES_KEY, "app-sales-key"),
}


@pytest.fixture
def difys() -> Iterator[dict[str, DifySimulator]]:
    """One Dify app per bot, each accepting only its own API key."""
    sims = {bot: DifySimulator(api_keys={key}).start() for bot, (_, _, key) in CREDENTIALS.items()}
    yield sims
    for sim in sims.values():
        sim.stop()


def start_replicas(tmp_path: Path, redis_url: str, difys: dict[str, DifySimulator], **extra: str) -> list[Replica]:
    """Two replicas serving the three bots from a bots file whose secrets come from the environment."""
    env = {"REDIS_URL": redis_url, "LOG_LEVEL": "WARNING", "BOTS_FILE": str(tmp_path / "bots.toml"), **extra}
    tables = []
    for bot, (token, key, api_key) in CREDENTIALS.items():
        up = bot.upper()
        env |= {f"WECOM_TOKEN_{up}": token, f"WECOM_AES_KEY_{up}": key, f"DIFY_KEY_{up}": api_key}
        tables.append(f'[bots.{bot}]\nwecom_token = "${{WECOM_TOKEN_{up}}}"\n'
                      f'wecom_encoding_aes_key = "${{WECOM_AES_KEY_{up}}}"\n'
                      f'dify_base_url = "{difys[bot].url}"\ndify_api_key = "${{DIFY_KEY_{up}}}"\n'
                      f'[bots.{bot}.messages]\nexpired = "{bot}: expired"\nbusy = "{bot}: busy"\n')
    (tmp_path / "bots.toml").write_text("\n".join(tables), encoding="utf-8")
    pair = [Replica(env), Replica(env)]
    try:
        for r in pair:
            r.start()
    except BaseException:
        for r in pair:
            r.stop()
        raise
    return pair


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
             difys: dict[str, DifySimulator]) -> Iterator[list[Replica]]:
    pair = start_replicas(tmp_path, redis_url, difys)
    yield pair
    for r in pair:
        r.stop()


def client(bot: str, *, signed_as: str | None = None) -> WeComClient:
    token, key, _ = CREDENTIALS[signed_as or bot]
    return WeComClient(WeComSigner(token, key, ""), path=f"/wecom/callback/{bot}")


def test_three_bots_stream_exactly_and_stay_apart(replicas: list[Replica], difys: dict[str, DifySimulator],
                                                  redis_client: redis.Redis) -> None:
    urls = [r.url for r in replicas]
    answers = {bot: f"{bot} 的长回答，逐字流出。" * 15 for bot in CREDENTIALS}
    for bot, sim in difys.items():
        for i in range(4):
            sim.script(f"{bot}-问题{i}", Script(answer=f"{answers[bot]}#{i}", delta_size=3, delay=0.01))
    results: dict[tuple[str, int], list[str]] = {}
    lock = threading.Lock()

    def converse(bot: str, i: int) -> None:
        payload = text_message(f"{bot}-问题{i}", userid=f"user{i}", msgid=f"{bot}-m{i}")
        frames = client(bot).converse(urls[i % 2:] + urls[:i % 2], payload, interval=0.05)  # both replicas poll
        with lock:
            results[(bot, i)] = [f["stream"]["content"] for f in frames if f["stream"]["finish"]]

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda job: converse(*job), [(bot, i) for bot in CREDENTIALS for i in range(4)]))
    for (bot, i), finals in results.items():
        assert finals == [f"{answers[bot]}#{i}"], (bot, i)
    for bot, sim in difys.items():
        chats = sim.chat_requests()
        assert sorted(r.json["query"] for r in chats) == [f"{bot}-问题{i}" for i in range(4)]
        assert {r.headers["authorization"] for r in chats} == {f"Bearer {CREDENTIALS[bot][2]}"}
        assert all(r.json["user"].startswith(f"wecom:{bot}:") for r in chats)

    # cross-bot: hr's signature at it's URL, an unknown bot, and hr's stream polled through it
    wrong = client("it", signed_as="hr")
    with pytest.raises(requests.HTTPError) as refused:
        wrong.send(urls[0], text_message("it-问题0", msgid="cross-1"))
    assert refused.value.response.status_code == 403
    with pytest.raises(requests.HTTPError) as unknown:
        WeComClient(WeComSigner(*CREDENTIALS["hr"][:2], ""), path="/wecom/callback/payroll").send(
            urls[1], text_message("hi"))
    assert unknown.value.response.status_code == 404
    hr_sid = client("hr").send(urls[0], text_message("hr-问题0", userid="user0", msgid="hr-m0"))["stream"]["id"]  # type: ignore[index]
    assert client("hr").poll(urls[1], hr_sid)["stream"]["content"] == f"{answers['hr']}#0"  # a re-delivery
    for bot in ("it", "sales"):
        frame = client(bot).send(urls[1], stream_refresh(hr_sid))
        assert frame == {"msgtype": "stream", "stream": {"id": hr_sid, "finish": True, "content": f"{bot}: expired"}}
    assert sum(len(sim.chat_requests()) for sim in difys.values()) == 12  # nothing reached any Dify twice

    keys = [k.decode() for k in redis_client.scan_iter(count=1000)]
    assert keys
    outside = [k for k in keys if not any(k.startswith(f"wecomdify:{bot}:") for bot in CREDENTIALS)]
    assert outside == []
    assert {k.split(":")[1] for k in keys} == set(CREDENTIALS)
    assert [k for k in keys if redis_client.ttl(k) <= 0] == []


def test_a_flood_on_one_bot_does_not_starve_another(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
                                                    difys: dict[str, DifySimulator]) -> None:
    # 60 answers per worker: each of the three bots keeps 10 (half of it split evenly), 30 are shared
    pair = start_replicas(tmp_path, redis_url, difys, ENGINE_CAPACITY="60", SHUTDOWN_DRAIN_SECONDS="0")
    try:
        urls = [r.url for r in pair]
        difys["hr"].default = Script(answer="慢" * 200, delta_size=1, delay=0.3)  # a minute per answer
        difys["it"].script("IT 的问题", Script(answer="IT 马上回答你。", delta_size=2, delay=0.01))

        def flood(i: int) -> str:
            frame = client("hr").send(urls[i % 2], text_message(f"hr 慢问题 {i}", userid=f"u{i}", msgid=f"f{i}"))
            assert frame is not None
            return "busy" if frame["stream"]["finish"] else "started"

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(flood, range(300)))
        # hr is saturated: its 10 own answers and the 30 shared ones, on each replica's worker
        assert outcomes.count("started") == 80 and outcomes.count("busy") == 220
        wait_for(lambda: difys["hr"].open_now == 80, timeout=20)

        first = client("it").send(urls[0], text_message("IT 的问题", userid="it-user", msgid="it-1"))
        assert first is not None and not first["stream"]["finish"]  # admitted, not "busy"
        sid = first["stream"]["id"]
        wait_for(lambda: client("it").poll(urls[1], sid)["stream"]["content"] != "", timeout=20)
        assert difys["hr"].open_now == 80  # it's answer streamed while every hr answer was still running
        final = client("it").converse([urls[1]], stream_refresh(sid, userid="it-user"), interval=0.05)
        assert final[-1]["stream"] == {"id": sid, "finish": True, "content": "IT 马上回答你。"}
    finally:
        for r in pair:
            r.stop()


def test_gunicorn_refuses_to_start_on_a_bad_bots_file(tmp_path: Path, redis_url: str) -> None:
    secret = "app-must-not-be-printed"
    (tmp_path / "bots.toml").write_text('[bots.hr]\nwecom_token = "${T}"\nwecom_encoding_aes_key = "${K}"\n'
                                        'dify_base_url = "http://127.0.0.1:9/v1"\ndify_api_key = "${DIFY_KEY_HR}"\n',
                                        encoding="utf-8")
    env = {"REDIS_URL": redis_url, "BOTS_FILE": str(tmp_path / "bots.toml"), "T": "tok", "K": "short-" + secret,
           "DIFY_KEY_HR": secret}
    replica = Replica(env)
    with pytest.raises(RuntimeError) as exited:
        replica.start(timeout=20)
    replica.stop()
    assert "bots.hr.wecom_encoding_aes_key: must be 43 letters" in str(exited.value)
    assert secret not in str(exited.value)

"""Two gunicorn replicas, one long-connection bot: exactly one subscription; an answer survives the holder's
SIGKILL (a standby subscribes within the goal and the answer completes once); SIGTERM hands over; a split
brain settles without a kick loop."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.helpers import wait_for
from tests.procs import Replica
from tools.dify_sim import DifySimulator, Script
from tools.wecom_ws_sim import LongConnectionSim

pytestmark = pytest.mark.process

BOT, SECRET = "aibot-ha", "ha-secret"
GOAL = 10.0  # seconds from the holder's death to a standby's subscription (issue 14)
PREFIX = "wecomdify:"


@pytest.fixture
def sim() -> Iterator[LongConnectionSim]:
    server = LongConnectionSim({BOT: SECRET}).start()
    yield server
    server.stop()


@pytest.fixture
def replicas(redis_url: str, redis_client: redis.Redis, dify: DifySimulator,
             sim: LongConnectionSim) -> Iterator[list[Replica]]:
    env = {"WECOM_TRANSPORT": "websocket", "WECOM_BOT_ID": BOT, "WECOM_WS_SECRET": SECRET, "WECOM_WS_URL": sim.url,
           "WS_LEASE_SECONDS": "3", "REDIS_URL": redis_url, "DIFY_BASE_URL": dify.url,
           "DIFY_API_KEY": "app-test-key", "LOG_LEVEL": "INFO", "SHUTDOWN_DRAIN_SECONDS": "5"}
    started = [Replica(env).start(), Replica(env).start()]
    yield started
    for replica in started:
        replica.stop()  # (a killed one too: its log is closed)


def holder(replicas: list[Replica], redis_client: redis.Redis) -> Replica:
    """The replica whose worker holds the lease now (its log names the term)."""
    term = redis_client.get(f"{PREFIX}ws:holder:{BOT}")
    assert term is not None
    found = [r for r in replicas if r.proc is not None and r.proc.poll() is None and term.decode() in r.output()]
    assert len(found) == 1, term
    return found[0]


def message(content: str) -> dict[str, Any]:
    return {"msgid": uuid.uuid4().hex, "aibotid": BOT, "chattype": "single", "from": {"userid": "zhangsan"},
            "msgtype": "text", "text": {"content": content}}


def finished(sim: LongConnectionSim, req_id: str) -> list[dict[str, Any]]:
    return [a for a in sim.answers(req_id) if a["stream"]["finish"]]


def test_an_answer_survives_the_holders_sigkill(replicas: list[Replica], sim: LongConnectionSim,
                                                dify: DifySimulator, redis_client: redis.Redis) -> None:
    answer = "这是一个很长的回答，" * 8
    dify.script("长问题", Script(answer=answer, delta_size=4, delay=0.15))  # about 3 s
    wait_for(lambda: sim.live(BOT) is not None, timeout=15)
    time.sleep(1.0)
    assert len(sim.subscriptions(BOT)) == 1  # exactly one live subscription, two replicas up
    req_id = sim.send_message(BOT, message("长问题"))
    wait_for(lambda: any(a["stream"]["content"] for a in sim.answers(req_id)), timeout=10)  # streaming
    dead = holder(replicas, redis_client)
    killed = time.monotonic()
    dead.kill_all()
    wait_for(lambda: len(sim.subscriptions(BOT)) == 2 and sim.live(BOT) is not None, timeout=GOAL + 5)
    took = time.monotonic() - killed
    assert took <= GOAL, took
    wait_for(lambda: finished(sim, req_id), timeout=20)
    [last] = finished(sim, req_id)  # completed once
    assert last["stream"]["content"] == answer
    assert len(dify.chat_requests()) == 1  # produced once, by the replica that lived


def test_sigterm_hands_over_within_the_goal(replicas: list[Replica], sim: LongConnectionSim,
                                            redis_client: redis.Redis) -> None:
    wait_for(lambda: sim.live(BOT) is not None, timeout=15)
    leaving = holder(replicas, redis_client)
    first = sim.live(BOT)
    assert first is not None
    leaving.signal(signal.SIGTERM)
    wait_for(lambda: len(sim.subscriptions(BOT)) == 2 and sim.live(BOT) is not None, timeout=GOAL + 5)
    second = sim.live(BOT)
    assert second is not None and first.closed is not None
    assert second.opened - first.closed <= 3.0  # a handover, not a lease lapse
    assert sim.kicks == 0


def test_a_split_brain_settles_to_one_holder(replicas: list[Replica], sim: LongConnectionSim,
                                             redis_client: redis.Redis) -> None:
    wait_for(lambda: sim.live(BOT) is not None, timeout=15)
    time.sleep(1.0)
    redis_client.delete(f"{PREFIX}ws:holder:{BOT}")  # by hand, both replicas up
    wait_for(lambda: redis_client.get(f"{PREFIX}ws:holder:{BOT}") is not None, timeout=5)
    time.sleep(8.0)
    assert sim.kicks <= 1  # kicked once at most, then it stood by: no loop
    assert sim.live(BOT) is not None
    holder(replicas, redis_client)  # one holder

"""Issue 15: the same replica on one Redis server, a 3-master Redis Cluster and a Sentinel-watched master.

``python -m bench.topologies [--polls N] [--messages N] [--json PATH]`` starts the three Redis
deployments on loopback (tests/redis_topologies.py), one gunicorn replica of the bridge on each in
turn (the repo's gunicorn.conf.py, 1 worker x 8 threads) and the threaded Dify simulator. For each it
times, from one keep-alive client, sequential polls of a finished 3 KB answer and new messages
(their callbacks only: the answer comes later). Requests are signed and encrypted before the clock
starts; the reply is read but not decrypted. Then the Sentinel failover of tests/test_sentinel.py,
measured on its own: the master is killed and callbacks are sent until the promotion.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests

from tests.conftest import AES_KEY, TOKEN
from tests.procs import Replica
from tests.redis_topologies import Cluster, SentinelGroup
from tests.servers import RedisServer
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import SignedRequest, WeComClient, WeComSigner, stream_refresh, text_message


@contextmanager
def deployment(kind: str) -> Iterator[tuple[str, Callable[[], None] | None]]:
    """A started Redis deployment: its URL, and (Sentinel only) a function killing the master."""
    if kind == "single":
        server = RedisServer().start()
        try:
            yield server.url, None
        finally:
            server.close()
    elif kind == "cluster":
        cluster = Cluster().start()
        try:
            yield cluster.url, None
        finally:
            cluster.close()
    else:
        group = SentinelGroup().start()
        try:
            yield group.url, group.master.kill
        finally:
            group.close()


def timed(session: requests.Session, url: str, reqs: list[SignedRequest]) -> list[float]:
    """Seconds each request took, one after another on one keep-alive connection."""
    out = []
    for req in reqs:
        started = time.perf_counter()
        resp = session.post(f"{url}/wecom/callback?{req.query_string}", data=req.body,
                            headers={"Content-Type": "application/json"}, timeout=10)
        resp.raise_for_status()
        out.append(time.perf_counter() - started)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2), "n": len(ordered)}


def measure(kind: str, dify: DifySimulator, polls: int, messages: int) -> dict[str, Any]:
    """Polls and new-message callbacks on one replica over ``kind``; the failover too for Sentinel."""
    signer = WeComSigner(TOKEN, AES_KEY)
    client = WeComClient(signer)
    with deployment(kind) as (redis_url, kill_master):
        replica = Replica({"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "REDIS_URL": redis_url,
                           "DIFY_BASE_URL": dify.url, "DIFY_API_KEY": "app-bench", "LOG_LEVEL": "ERROR"}).start()
        try:
            frames = client.converse([replica.url], text_message("三千字节"), interval=0.05)
            sid = frames[-1]["stream"]["id"]
            session = requests.Session()
            warm = [signer.callback(stream_refresh(sid)) for _ in range(200)]
            timed(session, replica.url, warm)
            poll = summary(timed(session, replica.url, [signer.callback(stream_refresh(sid)) for _ in range(polls)]))
            news = summary(timed(session, replica.url, [signer.callback(text_message("静候", userid=f"u{i}"))
                                                        for i in range(messages)]))
            result: dict[str, Any] = {"poll_3kb": poll, "new_message": news}
            if kill_master is not None:
                result["failover"] = failover(client, replica.url, kill_master)
            print(f"{kind:8} poll 3 KB p50 {poll['p50_ms']} ms p99 {poll['p99_ms']} ms | new message p50 "
                  f"{news['p50_ms']} ms p99 {news['p99_ms']} ms", flush=True)
            return result
        finally:
            replica.stop()


def failover(client: WeComClient, url: str, kill_master: Callable[[], None]) -> dict[str, Any]:
    """Kill the master; send callbacks until one is answered normally again; how long and how fast."""
    kill_master()
    killed, slowest, busy, sent = time.monotonic(), 0.0, 0, 0
    while True:
        started = time.monotonic()
        frame = client.send(url, text_message("切换", userid=f"f{sent}"))
        slowest, sent = max(slowest, time.monotonic() - started), sent + 1
        assert frame is not None
        if frame["stream"]["content"] == "服务繁忙，请稍后重试。":
            busy += 1
            time.sleep(0.1)
            continue
        return {"answering_again_after_s": round(time.monotonic() - killed, 2), "callbacks": sent,
                "busy_frames": busy, "slowest_callback_ms": round(slowest * 1000, 1)}


def main() -> None:
    """Run the three deployments in one run and print (and optionally write) the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=3000)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    dify = DifySimulator().start()
    try:
        dify.script("三千字节", Script(answer="答" * 1024))  # 3 KB of UTF-8
        dify.script("静候", Script(answer="好", stall=30))  # held open: only the callback is timed
        results = {kind: measure(kind, dify, args.polls, args.messages) for kind in ("single", "cluster", "sentinel")}
    finally:
        dify.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""Long-connection failover, measured on real processes (issue 14: a standby subscribes ≤ 10 s after the
holder dies).

    python -m bench.failover [--rounds 5] [--lease 6] [--json bench/results-failover.json]

Two gunicorn replicas (one worker each) serve one long-connection bot against the WeCom long-connection
simulator, on a throwaway Redis. Each SIGKILL round kills the holder's whole replica and times how long
until the standby's subscription is live (then a fresh replica joins as the next standby). Each SIGTERM
round times the gap between the old connection's close and the new one's subscription (a handover).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import redis

from tests.procs import Replica
from tests.servers import RedisServer
from tools.dify_sim import DifySimulator
from tools.wecom_ws_sim import LongConnectionSim

BOT, SECRET = "aibot-bench", "bench-secret"


def wait(predicate: Any, timeout: float) -> None:
    """Wait for ``predicate`` (polling every 10 ms); TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def holder(replicas: list[Replica], client: redis.Redis) -> Replica:
    """The replica whose worker holds the bot's lease (its log names the term)."""
    wait(lambda: client.get(f"wecomdify:ws:holder:{BOT}") is not None, 30)
    term = client.get(f"wecomdify:ws:holder:{BOT}").decode()  # type: ignore[union-attr]
    wait(lambda: any(term in r.output() for r in replicas if r.proc and r.proc.poll() is None), 10)
    return next(r for r in replicas if r.proc and r.proc.poll() is None and term in r.output())


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print (and save) the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease", type=float, default=6.0, help="WS_LEASE_SECONDS (default %(default)s)")
    parser.add_argument("--json", default="bench/results-failover.json")
    args = parser.parse_args(argv)
    redis_server, dify, sim = RedisServer().start(), DifySimulator().start(), LongConnectionSim({BOT: SECRET}).start()
    env = {"WECOM_TRANSPORT": "websocket", "WECOM_BOT_ID": BOT, "WECOM_WS_SECRET": SECRET, "WECOM_WS_URL": sim.url,
           "WS_LEASE_SECONDS": str(args.lease), "REDIS_URL": redis_server.url, "DIFY_BASE_URL": dify.url,
           "DIFY_API_KEY": "app-bench", "LOG_LEVEL": "INFO", "SHUTDOWN_DRAIN_SECONDS": "3"}
    client = redis.Redis.from_url(redis_server.url)
    replicas = [Replica(env).start(), Replica(env).start()]
    kills: list[float] = []
    handovers: list[float] = []
    try:
        for _ in range(args.rounds):
            dead = holder(replicas, client)
            before = len(sim.subscriptions(BOT))
            started = time.monotonic()
            dead.kill_all()
            wait(lambda: len(sim.subscriptions(BOT)) > before and sim.live(BOT) is not None, 30)  # noqa: B023
            kills.append(time.monotonic() - started)
            dead.stop()
            replicas = [r for r in replicas if r is not dead] + [Replica(env).start()]
        for _ in range(args.rounds):
            leaving = holder(replicas, client)
            old, before = sim.live(BOT), len(sim.subscriptions(BOT))
            leaving.signal(signal.SIGTERM)
            wait(lambda: len(sim.subscriptions(BOT)) > before and sim.live(BOT) is not None, 30)  # noqa: B023
            new = sim.live(BOT)
            assert old is not None and new is not None
            wait(lambda: old.closed is not None, 10)  # noqa: B023
            handovers.append(max(0.0, new.opened - (old.closed or new.opened)))
            leaving.proc.wait(30)  # type: ignore[union-attr]
            leaving.stop()
            replicas = [r for r in replicas if r is not leaving] + [Replica(env).start()]
    finally:
        for replica in replicas:
            replica.stop()
        sim.stop()
        dify.stop()
        redis_server.close()
    result = {"lease_seconds": args.lease, "rounds": args.rounds, "kicks": sim.kicks,
              "sigkill_to_subscribed_s": {"median": statistics.median(kills), "max": max(kills)},
              "sigterm_gap_s": {"median": statistics.median(handovers), "max": max(handovers)}}
    print(json.dumps(result, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark's fixed settings (credentials, gunicorn, what ours is told) and its profiles."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from bench.apps import filler

TOKEN = "BenchToken0123456789abcdefghijkl"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
WORKERS, THREADS = 2, 8
GUNICORN_ARGS = ("--reuse-port", "--worker-connections", "4096")  # 2000 keep-alive pollers on 2 workers
# What every instance of ours is told. Only the names config.Settings declares are passed
# (settings_env), so the same harness runs before and after the engine rewrite.
NODE_SETTINGS = {
    "ENGINE_CAPACITY": "2048",  # concurrent answers per worker: 2000 live conversations per node fit
    "PRODUCER_THREADS": "512",  # the thread-per-answer producers' equivalent (their maximum)
    "PRODUCER_BACKLOG": "100000",
    "DIFY_IDLE_TIMEOUT": "900",  # the seeded poll streams are held open with pings for minutes
}
TRIO = {"floor": "bench.apps:floor()", "ours": "bench.apps:ours()", "peer": "bench.apps:peer()"}
NEW_QUERY = "benchmark"  # Dify holds these answers for the whole run
TTFT_QUERY = "ttft probe"
TTFT_ANSWER = filler(300)  # about 100 characters, in deltas of 20
TTFT_DELTA = 20
MIXED_ANSWER = filler(3000)  # 1000 characters in 20 deltas of 50
POLLERS_QUERY = "pollers seed"  # answered at once with POLLERS_BYTES, then finished
POLLERS_BYTES = 3000  # the finished stream the pollers poll, as big as a mixed answer
POLLERS_POOL = 4  # pre-signed refreshes per poller connection, sent in turn
SCENARIOS = ("crypto", "poll", "mixed", "pollers", "bots")  # what --skip can skip ("poll" includes new message)


@dataclass(frozen=True)
class Profile:
    """How long and how big each scenario is."""

    seconds: float  # one throughput run
    rounds: int  # throughput rounds per poll size (the app order rotates between rounds)
    sizes: tuple[int, ...]
    streams: int  # live streams the poll runs cycle through
    concurrency: int
    requests: int  # distinct pre-signed requests per scenario
    warmup: int  # requests per app before the first round
    mixed: tuple[int, ...]  # conversations in the mixed scenario, and pollers in the pollers scenario
    mixed_seconds: float  # one mixed run, and one pollers run
    mixed_grace: float  # at most this long after mixed_seconds for the last answers to finish
    poll_interval: float  # seconds between a mixed conversation's (and a poller's) polls (WeCom: about 1)
    dify_delay: float  # seconds between Dify's 20 deltas of each mixed answer
    ttft_conversations: int
    ttft_rate: float  # first-token probes started per second
    ttft_delay: float  # the simulated Dify's time to first token, in seconds
    crypto_ops: int
    bots_capacity: int  # ENGINE_CAPACITY per worker in the bots scenario
    bots_flood: int  # messages to bot a whose answers never end (more than the node holds)
    bots_probes: int  # bot b's first-token probes per phase


FULL = Profile(seconds=6, rounds=3, sizes=(1024, 10240, 20000), streams=200, concurrency=32, requests=30000,
               warmup=300, mixed=(10, 100, 500, 2000), mixed_seconds=20, mixed_grace=60, poll_interval=1.0,
               dify_delay=0.5, ttft_conversations=200, ttft_rate=20, ttft_delay=0.3, crypto_ops=20000,
               bots_capacity=512, bots_flood=1536, bots_probes=40)
SMOKE = Profile(seconds=0.3, rounds=2, sizes=(1024,), streams=8, concurrency=4, requests=400, warmup=10,
                mixed=(5,), mixed_seconds=1.0, mixed_grace=5, poll_interval=0.2, dify_delay=0.02,
                ttft_conversations=5, ttft_rate=50, ttft_delay=0.05, crypto_ops=300,
                bots_capacity=16, bots_flood=96, bots_probes=3)  # 3x the node: each worker surely gets its fill


def override(profile: Profile, items: list[str]) -> Profile:
    """``profile`` with ``FIELD=VALUE`` items applied (tuples as comma-separated ints)."""
    changes: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        current = getattr(profile, name.strip())
        if isinstance(current, tuple):
            changes[name.strip()] = tuple(int(v) for v in value.split(",") if v.strip())
        else:
            changes[name.strip()] = type(current)(value)
    return replace(profile, **changes)


def settings_env(wanted: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The subset of ``wanted`` that ``config.Settings`` declares, and the names it does not."""
    from config import Settings

    declared = {str(f.metadata.get("env")) for f in fields(Settings)}
    return {k: v for k, v in wanted.items() if k in declared}, sorted(set(wanted) - declared)

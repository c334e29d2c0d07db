"""Several bots on one node: how fast bot b answers while bot a is flooded past its share.

Method. One node of ours (``WORKERS`` workers, ``ENGINE_CAPACITY=bots_capacity`` each) serves two
bots, a and b, from a bots file; both use the benchmark's Dify. Bot b's probes are the first-token
probes of ``bench.mixed.first_token``, one after another: a message whose Dify answer starts after
``ttft_delay``, then a poll every 20 ms until the first text shows; added = that time - ttft_delay.
Three phases:
- b alone: nothing else runs on the node;
- b while a is flooded: ``bots_flood`` messages to a whose Dify answers never end (more than the
  whole node holds), then b's probes. With the default shares, a fills its own part and the shared
  rest and is answered "busy" beyond that; b's own part stays free;
- the same flood with ``capacity_share = 1.0`` for a: b keeps only the minimum, one answer per
  worker, and b's answers (each still running for seconds after its first token) mostly find it taken.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench import loadgen
from bench.measure import Bench, Row
from bench.profiles import NEW_QUERY, TTFT_ANSWER, TTFT_DELTA, TTFT_QUERY, WORKERS
from bench.servers import Server, flush, serving
from tools.wecom_client import WeComClient, WeComSigner, stream_refresh, text_message

CREDENTIALS = {"a": ("BenchBotA0123456789", "A" * 42 + "w"), "b": ("BenchBotB0123456789", "B" * 42 + "w")}


def bots(bench: Bench, redis_url: str, dify_url: str) -> None:
    """Run the three phases and add their rows and facts."""
    profile = bench.profile
    facts: dict[str, Any] = {"flood": profile.bots_flood, "capacity_per_worker": profile.bots_capacity,
                             "workers": WORKERS, "probes": profile.bots_probes}
    with tempfile.TemporaryDirectory(prefix="bench-bots-") as tmp:
        for config, share in (("fair", ""), ("a takes all", "capacity_share = 1.0\n")):
            path = Path(tmp) / f"{config.replace(' ', '-')}.toml"
            path.write_text("".join(f'[bots.{bot}]\nwecom_token = "{token}"\nwecom_encoding_aes_key = "{key}"\n'
                                    + (share if bot == "a" else "") for bot, (token, key) in CREDENTIALS.items()))
            env = bench.env(redis_url, dify_url, BOTS_FILE=str(path), ENGINE_CAPACITY=str(profile.bots_capacity))
            flush(redis_url)
            print(f"bots ({config}): b's first token, alone and while a is flooded", flush=True)
            with serving({"ours": "app:create_app()"}, env) as servers:
                server = servers["ours"]
                if config == "fair":
                    alone = probe(server, profile.bots_probes, profile.ttft_delay)
                    add_row(bench, "bots: b alone", alone, "")
                    facts["b_alone"] = alone
                    # let b's answers end: the flood's phase starts with none of b's slots in use
                    time.sleep(len(TTFT_ANSWER) / TTFT_DELTA * profile.ttft_delay + 1.0)
                started, busy = flood(server, profile.bots_flood)
                during = probe(server, profile.bots_probes, profile.ttft_delay)
                note = f"a: {started} admitted, {busy} busy of {profile.bots_flood}"
                add_row(bench, f"bots: b, a flooded ({config})", during, note)
                facts[f"a_flooded_{config}"] = {"a_admitted": started, "a_busy": busy, "b": during}
    bench.facts["bots"] = facts


def flood(server: Server, count: int) -> tuple[int, int]:
    """Send ``count`` messages to bot a whose answers never end; return (admitted, answered busy)."""
    client = WeComClient(WeComSigner(*CREDENTIALS["a"]), path="/wecom/callback/a")
    tag = uuid.uuid4().hex[:8]

    def one(i: int) -> bool:
        frame = client.send(server.url, text_message(NEW_QUERY, userid=f"flood{i}", msgid=f"fl-{tag}-{i}"))
        return frame is not None and not frame["stream"]["finish"]

    with ThreadPoolExecutor(32) as pool:
        admitted = sum(pool.map(one, range(count)))
    return admitted, count - admitted


def probe(server: Server, count: int, delay: float) -> dict[str, Any]:
    """``count`` first-token probes of bot b, one after another; added latency in ms and busy answers."""
    session = requests.Session()
    client = WeComClient(WeComSigner(*CREDENTIALS["b"]), session=session, path="/wecom/callback/b")
    added: list[float] = []
    busy = errors = 0
    first = TTFT_ANSWER[:TTFT_DELTA]
    for i in range(count):
        user = f"probe{i}-{uuid.uuid4().hex[:6]}"
        sent = time.monotonic()
        try:
            frame = client.send(server.url, text_message(TTFT_QUERY, userid=user, msgid=uuid.uuid4().hex))
            assert frame is not None
            sid = frame["stream"]["id"]
            while not frame["stream"]["finish"] and not frame["stream"]["content"].startswith(first):
                time.sleep(0.02)
                frame = client.send(server.url, stream_refresh(sid, userid=user))
                assert frame is not None
        except (requests.RequestException, AssertionError):
            errors += 1
            continue
        if frame["stream"]["content"].startswith(first):
            added.append((time.monotonic() - sent - delay) * 1000)
        else:
            busy += 1
    p50, p95, p99 = loadgen.percentiles(added) if added else (0.0, 0.0, 0.0)
    return {"answered": len(added), "busy": busy, "errors": errors,
            "added_ms": {"p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1)}}


def add_row(bench: Bench, scenario: str, result: dict[str, Any], note: str) -> None:
    """One report row: b's added first-token latency, and who was answered "busy"."""
    added = result["added_ms"]
    text = f"b: {result['answered']} answered, {result['busy']} busy" + (f"; {note}" if note else "")
    bench.rows.append(Row(scenario, "ours", 0.0, added["p50"], added["p95"], added["p99"], result["errors"], text))
    print(f"  b's first token added: p50 {added['p50']:.1f} ms, p99 {added['p99']:.1f} ms; {text}", flush=True)

"""``make bench``: measure the bridge on loopback against the bare-Flask floor and a peer.

Starts a real redis-server, the Dify simulator and gunicorn (same settings for every app: the
repo's gunicorn.conf.py, 2 gthread workers x 8 threads), drives them with pre-signed encrypted
callbacks, prints a table and writes it as JSON. ``--smoke`` is a seconds-long version for tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.apps import filler
from crypto import WeComCrypto
from services.keys import Keys
from services.stream_store import StreamStore
from tests.procs import Replica
from tests.servers import RedisServer, free_port, wait_for_port
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, stream_refresh, text_message

TOKEN = "BenchToken0123456789abcdefghijkl"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"


@dataclass(frozen=True)
class Profile:
    """How long and how big each scenario is."""

    seconds: float
    sizes: tuple[int, ...]
    mixed: tuple[int, ...]
    mixed_seconds: float
    concurrency: int
    crypto_ops: int
    requests: int  # distinct pre-signed requests per scenario (msgids never repeat within a run)
    dify_delay: float  # seconds between Dify's 20 deltas of each 3 KB answer


FULL = Profile(seconds=8, sizes=(1024, 10240, 20000), mixed=(10, 100, 500), mixed_seconds=20, concurrency=32,
               crypto_ops=20000, requests=30000, dify_delay=0.5)
SMOKE = Profile(seconds=1, sizes=(1024,), mixed=(5,), mixed_seconds=3, concurrency=4, crypto_ops=300, requests=2000,
                dify_delay=0.05)


@dataclass
class Row:
    """One line of the report."""

    scenario: str
    impl: str
    rps: float
    p50: float
    p95: float
    p99: float
    errors: int
    note: str = ""


class Bench:
    """Owns the servers and runs the scenarios."""

    def __init__(self, profile: Profile, use_wrk: bool) -> None:
        self.profile = profile
        self.use_wrk = use_wrk
        self.signer = WeComSigner(TOKEN, AES_KEY)
        self.rows: list[Row] = []
        self.facts: dict[str, Any] = {}

    def env(self, redis_url: str, dify_url: str, **extra: str) -> dict[str, str]:
        return {"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "REDIS_URL": redis_url,
                "DIFY_BASE_URL": dify_url, "DIFY_API_KEY": "app-bench", "LOG_LEVEL": "WARNING",
                "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "8", **extra}

    def load(self, port: int, reqs: list[tuple[str, bytes]]) -> loadgen.Result:
        run = loadgen.wrk if self.use_wrk else loadgen.closed_loop
        return run(port, reqs, self.profile.concurrency, self.profile.seconds)

    def record(self, scenario: str, impl: str, result: loadgen.Result, note: str = "") -> Row:
        row = Row(scenario, impl, result.rps, result.p50, result.p95, result.p99, result.errors, note)
        self.rows.append(row)
        print(f"  {scenario:<28} {impl:<6} {row.rps:8.0f} req/s  p50 {row.p50:6.2f} ms  p99 {row.p99:6.2f} ms"
              f"  errors {row.errors}", flush=True)
        return row

    def polls(self, sids: list[str], count: int) -> list[tuple[str, bytes]]:
        out = []
        for i in range(count):
            req = self.signer.callback(stream_refresh(sids[i % len(sids)]))
            out.append((loadgen.target(req), req.body))
        return out

    def messages(self, count: int) -> list[tuple[str, bytes]]:
        out = []
        for i in range(count):
            req = self.signer.callback(text_message("benchmark", userid=f"nm{i}", msgid=f"nm-{i}-{uuid.uuid4().hex}"))
            out.append((loadgen.target(req), req.body))
        return out

    def crypto(self) -> None:
        crypto = WeComCrypto(TOKEN, AES_KEY, "")
        req = self.signer.callback(stream_refresh("0" * 32))
        q = req.query
        n = self.profile.crypto_ops
        started = time.perf_counter()
        for _ in range(n):
            crypto.decrypt_json(q["msg_signature"], q["timestamp"], q["nonce"], req.body)
        decrypt = n / (time.perf_counter() - started)
        frame = json.dumps({"msgtype": "stream", "stream": {"id": "0" * 32, "finish": False,
                                                            "content": filler(1024)}}, ensure_ascii=False)
        started = time.perf_counter()
        for _ in range(n):
            crypto.encrypt_json(frame, q["nonce"])
        encrypt = n / (time.perf_counter() - started)
        self.facts["crypto_verify_decrypt_per_s"] = round(decrypt)
        self.facts["crypto_encrypt_sign_1kb_per_s"] = round(encrypt)
        print(f"  crypto: verify+decrypt {decrypt:,.0f}/s, encrypt+sign (1 KB frame) {encrypt:,.0f}/s", flush=True)


@contextmanager
def serving(env: dict[str, str], app: str = "app:create_app()", workers: int = 2) -> Iterator[Replica]:
    replica = Replica(env, workers=workers, threads=8, app=app).start()
    time.sleep(1.0)  # let every worker boot
    try:
        yield replica
    finally:
        replica.stop()


def check(replica: Replica, signer: WeComSigner, reqs: list[tuple[str, bytes]], size: int | None) -> None:
    """Send one request of the scenario and verify the reply is a valid encrypted frame of ``size`` bytes."""
    import requests

    tgt, body = reqs[-1]
    resp = requests.post(f"{replica.url}{tgt}", data=body, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.text[:200])
    query = dict(part.split("=", 1) for part in tgt.split("?", 1)[1].split("&"))
    from urllib.parse import unquote

    from tools.wecom_client import SignedRequest

    frame = signer.open_reply(resp.content, SignedRequest({k: unquote(v) for k, v in query.items()}))
    assert frame["msgtype"] == "stream", frame
    if size is not None:
        assert len(frame["stream"].get("content", "").encode()) == size, "unequal work: wrong content size"


def seed(redis_url: str, size: int, count: int) -> list[str]:
    """Create ``count`` live streams holding ``size`` bytes each, as a producer would have."""
    import redis

    store = StreamStore(redis.Redis.from_url(redis_url), Keys("wecomdify:"), owner_lease_ms=3_600_000)
    content = filler(size)
    sids = []
    for _ in range(count):
        sid = uuid.uuid4().hex
        store.claim(f"seed-{sid}", sid, "bench-producer", {"followup": "0"})
        store.set_status(sid, "running")
        store.write(sid, 1, content)
        sids.append(sid)
    return sids


def _serve_dify(port: int, delay: float) -> None:
    # 3 KB answers in 20 deltas (~10 s in the full run): conversations stay live while Dify traffic
    # stays small next to the polls being measured. The new-message query is held for the whole run.
    sim = DifySimulator(port=port, default=Script(answer=filler(3000), delta_size=50, delay=delay)).start()
    sim.script("benchmark", Script(answer="held", stall=600))
    while True:
        time.sleep(3600)


@contextmanager
def dify_process(delay: float) -> Iterator[str]:
    """Run the Dify simulator in its own process (no GIL shared with the load generator); yield its URL."""
    import multiprocessing

    port = free_port()
    proc = multiprocessing.get_context("fork").Process(target=_serve_dify, args=(port, delay), daemon=True)
    proc.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.join()


def run(profile: Profile, use_wrk: bool) -> Bench:
    """Run every scenario; return the bench with its rows and facts."""
    bench = Bench(profile, use_wrk)
    redis_server = RedisServer().start()
    try:
        with dify_process(profile.dify_delay) as dify_url:
            print("crypto alone", flush=True)
            bench.crypto()
            polls(bench, redis_server.url, dify_url)
            new_messages(bench, redis_server.url, dify_url)
            mixed(bench, redis_server.url, dify_url)
    finally:
        redis_server.close()
    return bench


def polls(bench: Bench, redis_url: str, dify_url: str) -> None:
    """Stream refreshes of live streams holding each content size: floor, ours, peer."""
    for size in bench.profile.sizes:
        label = f"poll {round(size / 1024)} KB"
        print(label, flush=True)
        env = bench.env(redis_url, dify_url, BENCH_CONTENT_BYTES=str(size))
        reqs = bench.polls(seed(redis_url, size, 200), bench.profile.requests)
        for impl, app in (("floor", "bench.apps:floor()"), ("ours", "app:create_app()"), ("peer", "bench.apps:peer()")):
            with serving(env, app) as server:
                check(server, bench.signer, reqs, size)
                bench.record(label, impl, bench.load(server.port, reqs))


def new_messages(bench: Bench, redis_url: str, dify_url: str) -> None:
    """New text messages (unique msgids): the callback's claim, stream creation and hand-off.

    Dify holds its answer for the whole run, so this measures the callback, not Dify traffic (which
    the peer does not have at all).
    """
    print("new message", flush=True)
    reqs = bench.messages(bench.profile.requests)
    env = bench.env(redis_url, dify_url, PRODUCER_THREADS="64", PRODUCER_BACKLOG="100000")
    for impl, app in (("ours", "app:create_app()"), ("peer", "bench.apps:peer()")):
        with serving(env, app) as server:
            check(server, bench.signer, reqs, None)
            bench.record("new message", impl, bench.load(server.port, reqs))


def mixed(bench: Bench, redis_url: str, dify_url: str) -> None:
    """N conversations, each polling once a second while Dify streams its 3 KB answer over ~10 s."""
    env = bench.env(redis_url, dify_url, PRODUCER_THREADS="300", PRODUCER_BACKLOG="1000")
    for n in bench.profile.mixed:
        print(f"mixed steady state, {n} conversations", flush=True)
        with serving(env) as ours:
            seen = loadgen.conversations(ours.port, bench.signer, n, bench.profile.mixed_seconds)
            rss = [rss_peak_mb(pid) for pid in ours.worker_pids()]
        p50, p95, p99 = loadgen.percentiles(seen.polls)
        result = loadgen.Result(len(seen.polls), seen.duration, seen.errors, p50, p95, p99)
        bench.record(f"mixed {n} conversations", "ours", result,
                     note=f"{seen.finished} answers finished; peak RSS/worker {max(rss):.0f} MB")
        bench.facts[f"mixed_{n}_peak_rss_mb_per_worker"] = round(max(rss), 1)
        bench.facts[f"mixed_{n}_answers_finished"] = seen.finished


def rss_peak_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(bench: Bench) -> str:
    """The table plus the headline ratios."""
    lines = [f"{'scenario':<26} {'impl':<6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for r in bench.rows:
        lines.append(f"{r.scenario:<26} {r.impl:<6} {r.rps:8.0f} {r.p50:8.2f} {r.p95:8.2f} {r.p99:8.2f} "
                     f"{r.errors:6d}  {r.note}".rstrip())
    by = {(r.scenario, r.impl): r for r in bench.rows}
    lines.append("")
    for scenario in sorted({r.scenario for r in bench.rows if r.scenario.startswith(("poll", "new"))}):
        ours, peer, floor = by.get((scenario, "ours")), by.get((scenario, "peer")), by.get((scenario, "floor"))
        parts = []
        if ours and peer and peer.rps:
            parts.append(f"ours/peer throughput {ours.rps / peer.rps:.2f}x")
            bench.facts[f"{scenario} ours/peer"] = round(ours.rps / peer.rps, 2)
        if ours and floor and ours.rps:
            parts.append(f"cost vs bare-Flask floor {floor.rps / ours.rps:.2f}x")
            bench.facts[f"{scenario} cost/floor"] = round(floor.rps / ours.rps, 2)
        lines.append(f"{scenario}: " + ", ".join(parts))
    mixed_rows = [r for r in bench.rows if r.scenario.startswith("mixed")]
    if len(mixed_rows) >= 2 and mixed_rows[0].p50:
        growth = mixed_rows[-1].p50 / mixed_rows[0].p50
        bench.facts["poll p50 growth first->last mixed"] = round(growth, 2)
        lines.append(f"poll p50 from {mixed_rows[0].scenario} to {mixed_rows[-1].scenario}: {growth:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (for tests)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and loadgen.wrk_available())
    if args.loadgen == "wrk" and not loadgen.wrk_available():
        parser.error("wrk is not installed (apt-get install wrk)")
    started = time.monotonic()
    bench = run(SMOKE if args.smoke else FULL, use_wrk)
    table = report(bench)
    print("\n" + table)
    print(f"\nload generator: {'wrk' if use_wrk else 'python asyncio'}; total {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in bench.rows], "facts": bench.facts}, indent=2,
                                        ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

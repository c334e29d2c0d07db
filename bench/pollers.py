"""Keep-alive pollers of one finished 3 KB stream, floor vs ours: what the gunicorn/Flask stack itself carries.

For each N of the profile's ``mixed`` list, N pollers each send one stream refresh per
``poll_interval`` (paced from the send, as WeCom does) for ``mixed_seconds``, first to the floor
(verify + decrypt + encrypt a frame of the same size, no Redis), then to ours (one finished stream
in Redis, created through ours with one message). Both apps run side by side with the same
gunicorn settings as every other scenario, and answer the same poll with byte-identical bodies.

Requests are pre-signed: each poller cycles through its own small pool (the apps do not dedupe
refreshes), so the forked generator does little more than write and read sockets. gunicorn's
gthread worker holds a thread on a new connection until its first request arrives (up to 5 s), so
the first request on a connection is slow by construction: each poller connects right before its
first request, and that request is left out of the percentiles (the note says how many were).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from bench import loadgen, openloop, procfs
from bench.apps import filler
from bench.measure import Bench, Row, children_cpu, plus
from bench.profiles import POLLERS_BYTES, POLLERS_POOL, POLLERS_QUERY, TRIO
from bench.servers import Server, fill_thread_pools, flush, serving
from bench.throughput import identical
from tools.wecom_client import stream_refresh, text_message

APPS = {"floor": TRIO["floor"], "ours": TRIO["ours"]}


def pollers(bench: Bench, redis_url: str, dify_url: str) -> None:
    """For each N: N keep-alive pollers against the floor, then against ours."""
    profile = bench.profile
    env = bench.env(redis_url, dify_url, BENCH_CONTENT_BYTES=str(POLLERS_BYTES), BENCH_PIN="1", BENCH_FINISH="1")
    for n in profile.mixed:
        print(f"pollers, {n} keep-alive pollers of one finished {POLLERS_BYTES}-byte stream", flush=True)
        flush(redis_url)
        with serving(APPS, env) as servers:
            sid, user = seed_finished(bench, servers["ours"])
            pools = []
            for _ in range(n):
                reqs = [bench.pinned.callback(stream_refresh(sid, userid=user)) for _ in range(POLLERS_POOL)]
                pools.append([(loadgen.target(req), req.body) for req in reqs])
            nbytes = identical(bench, servers, pools[0][0], POLLERS_BYTES, finish=True)
            print(f"  replies byte-identical across floor, ours ({nbytes} bytes, {POLLERS_BYTES} bytes of content, "
                  f"finished)", flush=True)
            facts: dict[str, Any] = {"reply_bytes": nbytes}
            for name in APPS:
                fill_thread_pools(bench.pinned, servers[name])
                facts[name] = run_pollers(bench, f"pollers {n}", servers[name], pools)
            bench.facts[f"pollers_{n}"] = facts


def seed_finished(bench: Bench, server: Server) -> tuple[str, str]:
    """Create one stream through ours whose answer (POLLERS_BYTES at once) has finished; return (sid, user)."""
    user = f"pollers-{uuid.uuid4().hex[:8]}"
    msg = bench.pinned.callback(text_message(POLLERS_QUERY, userid=user, msgid=f"{user}-m"))
    status, body = loadgen.send_all(server.port, [(loadgen.target(msg), msg.body)])[0]
    assert status == 200, (status, body[:200])
    sid = bench.pinned.open_reply(body, msg)["stream"]["id"]
    deadline = time.monotonic() + 30
    while True:
        poll = bench.pinned.callback(stream_refresh(sid, userid=user))
        status, body = loadgen.send_all(server.port, [(loadgen.target(poll), poll.body)])[0]
        frame = bench.pinned.open_reply(body, poll)["stream"] if status == 200 else {}
        if frame.get("finish"):
            assert frame["content"] == filler(POLLERS_BYTES), f"finished with {str(frame['content'])[:80]!r}"
            return sid, user
        if time.monotonic() > deadline:
            raise AssertionError(f"the pollers' stream never finished: status {status}, frame {str(frame)[:200]}")
        time.sleep(0.05)


def run_pollers(bench: Bench, scenario: str, server: Server, pools: list[list[tuple[str, bytes]]]) -> dict[str, Any]:
    """One pollers run against ``server`` (the generator in a forked child); add its row and return its facts."""
    profile = bench.profile
    pids, port = server.pids, server.port
    cpu = {pid: procfs.cpu_seconds(pid) for pid in pids}
    aux = [procfs.cpu_seconds(pid) for pid in bench.aux_pids]  # redis-server, Dify
    busy, children = procfs.machine_busy_seconds(), children_cpu()
    started = time.monotonic()
    child = loadgen.Child(openloop.pollers, port, pools, profile.mixed_seconds, interval=profile.poll_interval)
    split: dict[int, int] = {}
    if not child.done(timeout=0.6 * profile.mixed_seconds):  # one read (of every socket) once all are connected
        try:
            split = procfs.connections(pids, port)
        except (OSError, ValueError):  # a socket came or went while reading
            pass
    seen: openloop.Pollers = child.result()
    wall = time.monotonic() - started
    workers = [procfs.cpu_seconds(pid) - cpu[pid] for pid in pids]
    if sorted(server.replica.worker_pids()) != pids:
        raise RuntimeError(f"{server.name}: a worker died during the run\n{server.replica.output()[-3000:]}")
    generator = children_cpu() - children
    aux = [procfs.cpu_seconds(pid) - before for pid, before in zip(bench.aux_pids, aux, strict=True)]
    elsewhere = max(0.0, procfs.machine_busy_seconds() - busy - sum(workers) - generator - sum(aux))
    p50, p95, p99 = loadgen.percentiles(seen.latencies)
    first = sorted(seen.first)
    first_p50, first_max = (first[len(first) // 2], first[-1]) if first else (0.0, 0.0)
    lag = loadgen.percentiles(seen.lag)[2]
    cores = [round(w / wall, 2) for w in workers]
    conns = [split.get(pid, 0) for pid in pids]
    rate = seen.polls / seen.duration if seen.duration else 0.0
    note = (f"{len(pools)} pollers every {profile.poll_interval:g} s; excluded {len(first)} first requests on a "
            f"connection (median {first_p50:.1f} / max {first_max:.1f} ms); cores used over {wall:.0f} s "
            f"(of {os.cpu_count()}): workers "
            f"{plus(cores)} = {sum(cores):.2f}, loadgen {generator / wall:.2f}, redis {aux[0] / wall:.2f}, "
            f"elsewhere {elsewhere / wall:.2f}; "
            f"conns/worker {plus(conns)}; loadgen lag p99 {lag:.1f} ms; reopened {seen.reopened}")
    bench.rows.append(Row(scenario, server.name, rate, p50, p95, p99, seen.errors, note))
    print(f"  {server.name:<5} {rate:7.0f} polls/s  p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  p99 {p99:6.2f} ms  "
          f"errors {seen.errors}\n        {note}", flush=True)
    return {"polls_per_s": round(rate, 1), "polls": seen.polls, "p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
            "p99_ms": round(p99, 2), "errors": seen.errors, "excluded_first_requests": len(first),
            "first_request_ms": {"p50": round(first_p50, 2), "max": round(first_max, 2)},
            "worker_cores": cores, "loadgen_cores": round(generator / wall, 2),
            "redis_cores": round(aux[0] / wall, 2),
            "elsewhere_cores": round(elsewhere / wall, 2), "conns_per_worker": conns,
            "loadgen_lag_p99_ms": round(lag, 2), "reopened": seen.reopened}

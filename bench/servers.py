"""The processes under test: the apps under gunicorn (started, made ready, killed) and the simulated Dify."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen, procfs
from bench.apps import filler
from bench.profiles import (
    GUNICORN_ARGS,
    MIXED_ANSWER,
    NEW_QUERY,
    POLLERS_BYTES,
    POLLERS_QUERY,
    THREADS,
    TTFT_ANSWER,
    TTFT_DELTA,
    TTFT_QUERY,
    WORKERS,
    Profile,
)
from tests.procs import Replica
from tests.servers import free_port, wait_for_port
from tools.wecom_client import WeComSigner, stream_refresh


@dataclass
class Server:
    """One gunicorn master serving one app, with its worker pids."""

    name: str
    replica: Replica
    metrics_dir: str
    pids: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.replica.port

    @property
    def url(self) -> str:
        return self.replica.url

    def ready(self, timeout: float = 30.0) -> None:
        """Wait until every worker listens on its own socket and answers."""
        import requests

        deadline = time.monotonic() + timeout
        while True:
            pids = self.replica.worker_pids()
            if len(pids) == WORKERS and all(procfs.listening(pids, self.port).values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: workers {pids} not all listening\n{self.replica.output()}")
            time.sleep(0.05)
        for _ in range(8 * WORKERS):  # fresh connections land on every worker: each has loaded the app
            requests.get(f"{self.url}/livez", timeout=10).raise_for_status()
        self.pids = sorted(pids)

    def kill(self) -> None:
        """SIGKILL master and workers (nothing to drain in a benchmark), then remove the log and metrics."""
        if self.replica.proc is not None and self.replica.proc.poll() is None:
            self.replica.kill_all()
        self.replica.log.close()
        Path(self.replica.log.name).unlink(missing_ok=True)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


@contextmanager
def serving(apps: dict[str, str], env: dict[str, str]) -> Iterator[dict[str, Server]]:
    """Start the apps side by side (in parallel), wait until all are ready, kill them afterwards."""
    servers = {}
    for name, app in apps.items():
        metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
        replica = Replica({**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}, workers=WORKERS, threads=THREADS,
                          args=GUNICORN_ARGS, app=app)
        servers[name] = Server(name, replica, metrics_dir)
    errors: list[BaseException] = []

    def start(server: Server) -> None:
        try:
            server.replica.start()
            server.ready()
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=start, args=(s,)) for s in servers.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        yield servers
    finally:
        for server in servers.values():
            server.kill()


def fill_thread_pools(signer: WeComSigner, server: Server) -> None:
    """Grow every worker's gthread pool to its full size before counting threads.

    gunicorn starts a pool thread only when a request finds none idle, so a lightly loaded worker
    has fewer threads than a busy one; bursts of concurrent polls (of streams that do not exist)
    make the counts at 10 and at 2000 conversations compare like with like.
    """
    reqs = []
    for k in range(8 * THREADS * WORKERS):
        req = signer.callback(stream_refresh(f"{k:032x}", userid="pool-filler"))
        reqs.append((loadgen.target(req), req.body))
    for _ in range(2):
        loadgen.send_all(server.port, reqs, concurrency=4 * THREADS * WORKERS)


def flush(redis_url: str) -> None:
    """Empty Redis between scenarios (no app is running then)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()


def _serve_dify(port: int, profile: Profile, threaded: bool) -> None:
    # Mixed answers: 3 KB in 20 deltas (~10 s in the full run), so conversations stay live.
    mixed_answer = {"answer": MIXED_ANSWER, "delta_size": 50, "delay": profile.dify_delay}
    scripts: dict[str, dict[str, Any]] = {
        NEW_QUERY: {"answer": "held", "stall": 600},
        TTFT_QUERY: {"answer": TTFT_ANSWER, "delta_size": TTFT_DELTA, "delay": profile.ttft_delay},
        POLLERS_QUERY: {"answer": filler(POLLERS_BYTES), "delta_size": POLLERS_BYTES},  # at once, then finished
    }
    for size in profile.sizes:  # the poll streams: the whole content at once, then open with Dify's pings
        scripts[f"seed {size}"] = {"answer": filler(size), "delta_size": size, "stall": 3600, "ping_interval": 10}
    if not threaded:
        from bench import dify

        dify.serve(port, dify.Script(**mixed_answer), {q: dify.Script(**kw) for q, kw in scripts.items()})
        return
    from tools import dify_sim

    # http.server listens with a backlog of 5; 2000 producers connecting within a second overflow it
    # (and the kernel retries a dropped SYN only after 1 s). Benchmark-only, in this process only.
    dify_sim._Server.request_queue_size = 4096
    sim = dify_sim.DifySimulator(port=port, default=dify_sim.Script(**mixed_answer)).start()
    for query, kw in scripts.items():
        if kw.get("ping_interval"):
            kw = {**kw, "pings_during_stall": True}
        sim.script(query, dify_sim.Script(**kw))
    while True:
        time.sleep(3600)


@contextmanager
def dify_process(profile: Profile, threaded: bool = False) -> Iterator[tuple[str, int]]:
    """Run the Dify (bench.dify, or tools.dify_sim when ``threaded``) in its own process; yield URL and pid."""
    import multiprocessing

    port = free_port()
    proc = multiprocessing.get_context("fork").Process(target=_serve_dify, args=(port, profile, threaded),
                                                       daemon=True)
    proc.start()
    try:
        wait_for_port(port)
        assert proc.pid is not None
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.kill()
        proc.join()

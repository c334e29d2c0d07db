"""The results (rows, runs, facts) and the closed-loop throughput run that reads /proc meanwhile."""

from __future__ import annotations

import resource
import statistics
import threading
from dataclasses import dataclass, field
from typing import Any

from bench import loadgen, procfs
from bench.apps import FIXED_TIMESTAMP
from bench.profiles import AES_KEY, NODE_SETTINGS, THREADS, TOKEN, WORKERS, Profile, settings_env
from bench.servers import Server
from tools.wecom_client import WeComSigner


@dataclass
class Row:
    """One line of the report (for ``first token``, p50/p95/p99 are the added latency)."""

    scenario: str
    impl: str
    rps: float
    p50: float
    p95: float
    p99: float
    errors: int
    note: str = ""


@dataclass
class Run:
    """One throughput run of one app."""

    scenario: str
    impl: str
    round: int
    rps: float
    p50: float
    p95: float
    p99: float
    errors: int
    conns_per_worker: list[int] = field(default_factory=list)
    cpu_s_per_worker: list[float] = field(default_factory=list)
    cpu_s_loadgen: float = 0.0
    cpu_s_elsewhere: float = 0.0  # the machine's busy CPU not used by the workers, the generator, Redis or Dify


class Bench:
    """Owns the profile, the signers and the results."""

    def __init__(self, profile: Profile, use_wrk: bool) -> None:
        self.profile = profile
        self.use_wrk = use_wrk
        self.signer = WeComSigner(TOKEN, AES_KEY)
        # The poll and new-message apps run with BENCH_PIN=1: their crypto clock is FIXED_TIMESTAMP.
        self.pinned = WeComSigner(TOKEN, AES_KEY, clock=lambda: float(FIXED_TIMESTAMP))
        self.node_env, self.not_declared = settings_env(NODE_SETTINGS)
        self.rows: list[Row] = []
        self.runs: list[Run] = []
        self.aux_pids: list[int] = []  # redis-server and the Dify simulator
        self.facts: dict[str, Any] = {}

    def env(self, redis_url: str, dify_url: str, **extra: str) -> dict[str, str]:
        return {"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "REDIS_URL": redis_url,
                "DIFY_BASE_URL": dify_url, "DIFY_API_KEY": "app-bench", "LOG_LEVEL": "WARNING",
                "GUNICORN_WORKERS": str(WORKERS), "GUNICORN_THREADS": str(THREADS), **self.node_env, **extra}

    def run_load(self, scenario: str, server: Server, rnd: int, reqs: list[tuple[str, bytes]]) -> Run:
        """One closed-loop run against ``server``; reads the connection split from /proc every 0.25 s meanwhile."""
        pids, port, seconds = server.pids, server.port, self.profile.seconds
        cpu = {pid: procfs.cpu_seconds(pid) for pid in pids}
        aux, busy, children = self.aux_cpu(), procfs.machine_busy_seconds(), children_cpu()
        split: dict[int, int] = {}
        stop = threading.Event()

        def sample() -> None:  # keep the fullest sample: a connection still in the accept queue is in no fd table
            while not stop.wait(min(0.25, seconds / 10)):
                try:
                    now = procfs.connections(pids, port)
                except (OSError, ValueError):  # a socket or process came or went while reading
                    continue
                if sum(now.values()) > sum(split.values()):
                    split.update(now)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            if self.use_wrk:
                result = loadgen.wrk(port, reqs, self.profile.concurrency, seconds)
            else:
                result = loadgen.in_child(loadgen.closed_loop, port, reqs, self.profile.concurrency, seconds)
        finally:
            stop.set()
            sampler.join()
        workers = [round(procfs.cpu_seconds(pid) - cpu[pid], 2) for pid in pids]
        if sorted(server.replica.worker_pids()) != pids:
            raise RuntimeError(f"{server.name}: a worker died during the run\n{server.replica.output()[-3000:]}")
        generator = children_cpu() - children
        elsewhere = procfs.machine_busy_seconds() - busy - sum(workers) - generator - (self.aux_cpu() - aux)
        run = Run(scenario, server.name, rnd, result.rps, result.p50, result.p95, result.p99, result.errors,
                  [split.get(pid, 0) for pid in pids], workers, round(generator, 2), round(max(0.0, elsewhere), 2))
        self.runs.append(run)
        print(f"  {scenario:<12} round {rnd + 1}  {server.name:<5} {run.rps:7.0f} req/s  p50 {run.p50:6.2f} ms"
              f"  p99 {run.p99:6.2f} ms  errors {run.errors}  conns/worker {plus(run.conns_per_worker)}"
              f"  cpu s: workers {plus(run.cpu_s_per_worker)}, loadgen {run.cpu_s_loadgen:.1f},"
              f" elsewhere {run.cpu_s_elsewhere:.1f}", flush=True)
        return run

    def aux_cpu(self) -> float:
        return sum(procfs.cpu_seconds(pid) for pid in self.aux_pids)

    def summarise(self, scenario: str, impls: list[str]) -> None:
        """One row per app: medians over the rounds, with the per-round numbers in the note."""
        for impl in impls:
            runs = [r for r in self.runs if r.scenario == scenario and r.impl == impl]
            note = ("rounds " + " / ".join(f"{r.rps:.0f}" for r in runs) + " req/s; conns/worker "
                    + ", ".join(plus(r.conns_per_worker) for r in runs))
            self.rows.append(Row(scenario, impl, med([r.rps for r in runs]), med([r.p50 for r in runs]),
                                 med([r.p95 for r in runs]), med([r.p99 for r in runs]),
                                 sum(r.errors for r in runs), note))
        by_round: dict[int, dict[str, Run]] = {}
        for r in self.runs:
            if r.scenario == scenario:
                by_round.setdefault(r.round, {})[r.impl] = r
        for name, num, den in (("ours/peer", "ours", "peer"), ("cost/floor", "floor", "ours")):
            ratios = [rs[num].rps / rs[den].rps for rs in by_round.values() if num in rs and den in rs and rs[den].rps]
            if ratios:
                self.facts[f"{scenario} {name}"] = round(med(ratios), 2)
                self.facts[f"{scenario} {name} per round"] = [round(x, 2) for x in ratios]


def children_cpu() -> float:
    """CPU seconds used so far by this process's waited-for children (the forked load generators, wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def plus(values: list[Any]) -> str:
    return "+".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in values)

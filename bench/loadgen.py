"""Loopback load generators: wrk (C, for throughput) and a small asyncio HTTP/1.1 client.

The asyncio client runs closed-loop throughput (fallback when wrk is not installed) and the
WeCom-like open loop: N conversations, each sending a message and then polling its stream once a
second until ``finish``, as WeCom does. Every run is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.wecom_client import SignedRequest, WeComSigner, stream_refresh, text_message

HERE = Path(__file__).resolve().parent
PATH = "/wecom/callback"


@dataclass
class Result:
    """Throughput and latency of one scenario (latencies in milliseconds)."""

    requests: int
    seconds: float
    errors: int
    p50: float
    p95: float
    p99: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def percentiles(latencies_ms: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 of a sample (0 when empty)."""
    if len(latencies_ms) < 2:
        return (latencies_ms[0],) * 3 if latencies_ms else (0.0, 0.0, 0.0)
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def target(req: SignedRequest) -> str:
    """The request-target of a signed callback."""
    return f"{PATH}?{req.query_string}"


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tgt: str,
                body: bytes) -> tuple[int, bytes]:
    writer.write(f"POST {tgt} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length) if length else b""


async def _closed_loop(port: int, reqs: list[tuple[str, bytes]], concurrency: int, seconds: float) -> Result:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                tgt, body = reqs[next(counter) % len(reqs)]
                started = time.perf_counter()
                status, _ = await _call(reader, writer, tgt, body)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    p50, p95, p99 = percentiles(latencies)
    return Result(len(latencies), time.perf_counter() - started, errors, p50, p95, p99)


def closed_loop(port: int, reqs: list[tuple[str, bytes]], concurrency: int, seconds: float) -> Result:
    """Send ``reqs`` round-robin from ``concurrency`` keep-alive connections for ``seconds``."""
    return asyncio.run(_closed_loop(port, reqs, concurrency, seconds))


def wrk_available() -> bool:
    """True when the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def wrk(port: int, reqs: list[tuple[str, bytes]], concurrency: int, seconds: float) -> Result:
    """Run wrk (2 threads) over the pre-signed ``reqs``."""
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        for tgt, body in reqs:
            f.write(f"{tgt}\t{body.decode()}\n")
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", str(HERE / "wrk.lua"),
             f"http://127.0.0.1:{port}"],
            env={**os.environ, "WRK_REQUESTS": f.name}, capture_output=True, text=True, timeout=seconds + 60,
            check=True).stdout
    finally:
        os.unlink(f.name)
    data = json.loads(out.strip().splitlines()[-1])
    errors = data["non2xx"] + data["connect"] + data["read"] + data["timeout"]
    return Result(data["requests"], data["duration_us"] / 1e6, errors, data["p50"] / 1000, data["p95"] / 1000,
                  data["p99"] / 1000)


@dataclass
class Conversations:
    """What an open-loop conversation run saw."""

    polls: list[float] = field(default_factory=list)  # ms
    messages: list[float] = field(default_factory=list)  # ms
    finished: int = 0
    errors: int = 0
    duration: float = 0.0


async def _conversations(port: int, signer: WeComSigner, n: int, seconds: float, interval: float) -> Conversations:
    out = Conversations()
    deadline = time.perf_counter() + seconds

    async def one(i: int) -> None:
        await asyncio.sleep(interval * i / n)  # spread the starts over one poll interval
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            k = 0
            while time.perf_counter() < deadline:
                k += 1
                req = signer.callback(text_message(f"bench {i % 50}", userid=f"bench-user-{i}",
                                                   msgid=f"bench-{i}-{k}-{time.time_ns()}"))
                started = time.perf_counter()
                status, body = await _call(reader, writer, target(req), req.body)
                out.messages.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    out.errors += 1
                    return
                sid = signer.open_reply(body, req)["stream"]["id"]
                finished = False
                next_poll = time.perf_counter() + interval
                while not finished and time.perf_counter() < deadline:
                    await asyncio.sleep(max(0.0, next_poll - time.perf_counter()))
                    next_poll += interval
                    poll = signer.callback(stream_refresh(sid, userid=f"bench-user-{i}"))
                    started = time.perf_counter()
                    status, body = await _call(reader, writer, target(poll), poll.body)
                    out.polls.append((time.perf_counter() - started) * 1000)
                    if status != 200:
                        out.errors += 1
                        return
                    finished = signer.open_reply(body, poll)["stream"]["finish"]
                out.finished += finished
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    out.duration = time.perf_counter() - started
    return out


def conversations(port: int, signer: WeComSigner, n: int, seconds: float, interval: float = 1.0) -> Conversations:
    """Run ``n`` WeCom-like conversations (message, then a poll per ``interval``) for ``seconds``."""
    return asyncio.run(_conversations(port, signer, n, seconds, interval))

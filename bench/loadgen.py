"""Loopback load generators: wrk (C, for throughput), a small asyncio HTTP/1.1 client, forked runs.

The asyncio client (``Conn``) runs
- closed-loop throughput (the fallback when wrk is not installed);
- small batches (``send_all``) to seed, warm up and check the apps;
- the WeCom-like open loops of ``bench.openloop`` (conversations, first-token probes, pollers).

Every connection is HTTP/1.1 keep-alive. A connection the server closes (``Connection: close``, or
an idle keep-alive timeout) is reopened and the request sent again, once; that is counted. Every
run is bounded in time and count. ``in_child`` runs a generator in a forked process, so that it
has a core's worth of GIL to itself and the parent can read /proc meanwhile without slowing it.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tools.wecom_client import SignedRequest

HERE = Path(__file__).resolve().parent
PATH = "/wecom/callback"


@dataclass
class Result:
    """Throughput and latency of one run (latencies in milliseconds)."""

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


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port that reopens when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reopened = 0  # times a kept-alive connection had been closed by the server

    async def call(self, tgt: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` to ``tgt``; return the status and the response body."""
        for attempt in range(2):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                return await self._exchange(tgt, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if fresh or attempt:
                    raise
                self.reopened += 1
        raise AssertionError("unreachable")

    async def _exchange(self, tgt: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"POST {tgt} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length, close = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        data = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        """Close the socket (the next call reopens it)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# -- closed loop (throughput) ------------------------------------------------------------------------


async def _closed_loop(port: int, reqs: list[tuple[str, bytes]], concurrency: int, seconds: float) -> Result:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))
    conns = [Conn(port) for _ in range(concurrency)]

    async def worker(conn: Conn) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            tgt, body = reqs[next(counter) % len(reqs)]
            started = time.perf_counter()
            try:
                status, _ = await conn.call(tgt, body)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
            latencies.append((time.perf_counter() - started) * 1000)
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(worker(conn) for conn in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    p50, p95, p99 = percentiles(latencies)
    return Result(len(latencies), elapsed, errors, p50, p95, p99,
                  {"reopened": sum(c.reopened for c in conns)})


def closed_loop(port: int, reqs: list[tuple[str, bytes]], concurrency: int, seconds: float) -> Result:
    """Send ``reqs`` round-robin from ``concurrency`` keep-alive connections for ``seconds``."""
    return asyncio.run(_closed_loop(port, reqs, concurrency, seconds))


def wrk_available() -> bool:
    """True when the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def wrk(port: int, reqs: list[tuple[str, bytes]], concurrency: int, seconds: float) -> Result:
    """Run wrk (2 threads, ``concurrency`` keep-alive connections) over the pre-signed ``reqs``."""
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


# -- batches ----------------------------------------------------------------------------------------


async def _send_all(port: int, reqs: list[tuple[str, bytes]], concurrency: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = [(0, b"")] * len(reqs)
    todo = iter(range(len(reqs)))

    async def worker() -> None:
        conn = Conn(port)
        try:
            for i in todo:
                out[i] = await conn.call(*reqs[i])
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def send_all(port: int, reqs: list[tuple[str, bytes]], concurrency: int = 8) -> list[tuple[int, bytes]]:
    """Send every request once over ``concurrency`` fresh connections; return (status, body) in order."""
    return asyncio.run(_send_all(port, reqs, concurrency))


# -- running a generator in its own process ---------------------------------------------------------


def _child_main(send: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        send.send(("ok", fn(*args, **kwargs)))
    except BaseException:  # reported to the parent, which raises
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()


class Child:
    """A load generator running in a forked process."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child_main, args=(send, fn, args, kwargs), daemon=True)
        self.proc.start()
        send.close()

    def done(self, timeout: float = 0.0) -> bool:
        """True once the result is ready (waits up to ``timeout`` seconds)."""
        return self._recv.poll(timeout)

    def result(self) -> Any:
        """Wait for the generator; return its result or raise its error."""
        try:
            kind, value = self._recv.recv()
        except EOFError:
            self.proc.join()
            raise RuntimeError(f"load generator died (exit code {self.proc.exitcode})") from None
        finally:
            self._recv.close()
        self.proc.join()
        if kind == "error":
            raise RuntimeError(f"load generator failed:\n{value}")
        return value


def in_child(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a forked process and return its (picklable) result."""
    return Child(fn, *args, **kwargs).result()

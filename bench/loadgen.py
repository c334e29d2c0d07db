"""Loopback load generators: wrk (C, for throughput) and a small asyncio HTTP/1.1 client.

The asyncio client runs
- closed-loop throughput (the fallback when wrk is not installed);
- the WeCom-like open loop (``conversations``): N conversations, each sending a message and then
  polling its stream once a second until ``finish``, as WeCom does, then the next message;
- the first-token probe (``ttft``);
- small batches (``send_all``) to seed, warm up and check the apps.

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

from tools.wecom_client import SignedRequest, WeComSigner, stream_refresh, text_message

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


# -- conversations (the mixed scenario) -------------------------------------------------------------


@dataclass
class Conversations:
    """What an open-loop conversation run saw (latencies in ms)."""

    polls: list[float] = field(default_factory=list)  # polls sent before the deadline
    messages: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # the generator's own event-loop lag, sampled every 10 ms
    first: list[float] = field(default_factory=list)  # message sent -> end of the first poll showing text
    started: int = 0  # answers asked for (messages accepted)
    finished: int = 0  # answers whose stream reached finish
    complete: int = 0  # ... with exactly the text Dify sent
    drain_polls: int = 0  # polls after the deadline, while the last answers finish
    errors: int = 0
    reopened: int = 0
    duration: float = 0.0  # seconds until the deadline (the steady part)
    drain: float = 0.0  # seconds from the deadline until the last answer finished


async def _conversations(port: int, signer: WeComSigner, n: int, seconds: float, interval: float, grace: float,
                         prefix: str, query: Callable[[int], str], expected: str) -> Conversations:
    out = Conversations()
    start = time.perf_counter()
    deadline, hard = start + seconds, start + seconds + grace

    async def one(i: int) -> None:
        await asyncio.sleep(interval * i / n)  # spread the starts over one poll interval
        conn, user = Conn(port), f"{prefix}-{i}"
        try:
            k = 0
            while time.perf_counter() < deadline:  # no new message after the deadline
                k += 1
                req = signer.callback(text_message(query(i), userid=user, msgid=f"{prefix}-{i}-{k}"))
                sent = time.perf_counter()
                status, body = await conn.call(target(req), req.body)
                out.messages.append((time.perf_counter() - sent) * 1000)
                if status != 200:
                    out.errors += 1
                    return
                frame = signer.open_reply(body, req)["stream"]
                out.started += 1
                asked, shown = sent, bool(frame.get("content"))
                next_poll = time.perf_counter() + interval
                while not frame["finish"] and time.perf_counter() < hard:
                    await asyncio.sleep(max(0.0, next_poll - time.perf_counter()))
                    poll = signer.callback(stream_refresh(frame["id"], userid=user))
                    sent = time.perf_counter()
                    next_poll = sent + interval  # like WeCom: a slow poll delays the next, no catch-up burst
                    status, body = await conn.call(target(poll), poll.body)
                    if sent < deadline:
                        out.polls.append((time.perf_counter() - sent) * 1000)
                    else:
                        out.drain_polls += 1
                    if status != 200:
                        out.errors += 1
                        return
                    frame = signer.open_reply(body, poll)["stream"]
                    if not shown and frame.get("content"):
                        shown = True
                        out.first.append((time.perf_counter() - asked) * 1000)
                if frame["finish"]:
                    out.finished += 1
                    out.complete += frame.get("content") == expected
        except (OSError, asyncio.IncompleteReadError):
            out.errors += 1
        finally:
            out.reopened += conn.reopened
            conn.close()

    async def probe() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            out.lag.append((time.perf_counter() - before - 0.01) * 1000)

    prober = asyncio.create_task(probe())
    await asyncio.gather(*(one(i) for i in range(n)))
    prober.cancel()
    end = time.perf_counter()
    out.duration = seconds
    out.drain = max(0.0, end - deadline)
    return out


def conversations(port: int, signer: WeComSigner, n: int, seconds: float, *, interval: float = 1.0,
                  grace: float = 60.0, prefix: str = "bench", query: Callable[[int], str] = lambda i: f"bench {i % 50}",
                  expected: str = "") -> Conversations:
    """Run ``n`` WeCom-like conversations (message, then a poll per ``interval`` until finish) for ``seconds``.

    After ``seconds`` no new message is sent, but each conversation polls its last answer until it
    finishes (at most ``grace`` seconds more): so ``started == finished`` means every answer finished.
    Poll latencies count only polls sent before the deadline.
    """
    return asyncio.run(_conversations(port, signer, n, seconds, interval, grace, prefix, query, expected))


# -- time to first token ----------------------------------------------------------------------------


@dataclass
class FirstToken:
    """When the first token became visible to a fast poller, per conversation (ms after the message)."""

    seen: list[float] = field(default_factory=list)
    polls: int = 0
    missed: int = 0  # no content within the timeout
    errors: int = 0


async def _ttft(port: int, signer: WeComSigner, count: int, rate: float, query: str, first: str, probe: float,
                timeout: float, prefix: str) -> FirstToken:
    out = FirstToken()

    async def one(i: int) -> None:
        await asyncio.sleep(i / rate)
        conn, user = Conn(port), f"{prefix}-{i}"
        try:
            req = signer.callback(text_message(query, userid=user, msgid=f"{prefix}-{i}"))
            sent = time.perf_counter()
            status, body = await conn.call(target(req), req.body)
            if status != 200:
                out.errors += 1
                return
            frame = signer.open_reply(body, req)["stream"]
            next_poll = sent + probe
            while not frame.get("content", "").startswith(first):
                if frame["finish"] or time.perf_counter() - sent > timeout:
                    out.missed += 1
                    return
                await asyncio.sleep(max(0.0, next_poll - time.perf_counter()))
                next_poll = max(next_poll + probe, time.perf_counter())
                poll = signer.callback(stream_refresh(frame["id"], userid=user))
                status, body = await conn.call(target(poll), poll.body)
                out.polls += 1
                if status != 200:
                    out.errors += 1
                    return
                frame = signer.open_reply(body, poll)["stream"]
            out.seen.append((time.perf_counter() - sent) * 1000)  # the end of the first poll showing it
        except (OSError, asyncio.IncompleteReadError):
            out.errors += 1
        finally:
            conn.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return out


def ttft(port: int, signer: WeComSigner, count: int, *, rate: float, query: str, first: str, probe: float = 0.02,
         timeout: float = 10.0, prefix: str = "ttft") -> FirstToken:
    """Start ``count`` conversations (``rate`` per second), each polling every ``probe`` s until ``first`` shows.

    Each conversation sends ``query`` and records the time from sending the message until the end of
    the first poll whose content starts with ``first`` (the first delta Dify sends).
    """
    return asyncio.run(_ttft(port, signer, count, rate, query, first, probe, timeout, prefix))


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

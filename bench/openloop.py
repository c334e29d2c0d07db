"""WeCom-like open-loop load: conversations (mixed), first-token probes and keep-alive pollers.

Each runs on one asyncio loop (best in a forked ``loadgen.Child``), over ``loadgen.Conn`` keep-alive
connections, and is bounded in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loadgen import Conn, target
from tools.wecom_client import WeComSigner, stream_refresh, text_message

# -- conversations (the mixed scenario) -------------------------------------------------------------


async def probe_lag(lag: list[float]) -> None:
    """Sample the generator's own event-loop lag every 10 ms (ms), until cancelled."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        lag.append((time.perf_counter() - before - 0.01) * 1000)


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

    prober = asyncio.create_task(probe_lag(out.lag))
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



# -- keep-alive pollers (the pollers scenario) ------------------------------------------------------


@dataclass
class Pollers:
    """What a poller run saw (latencies in ms)."""

    latencies: list[float] = field(default_factory=list)  # every poll but a connection's first
    first: list[float] = field(default_factory=list)  # each connection's first poll (excluded from latencies)
    lag: list[float] = field(default_factory=list)  # the generator's own event-loop lag, sampled every 10 ms
    polls: int = 0  # replies (or failures) to polls sent before the deadline
    errors: int = 0
    reopened: int = 0  # kept-alive connections the server had closed
    duration: float = 0.0  # seconds polls were sent for


async def _pollers(port: int, pools: list[list[tuple[str, bytes]]], seconds: float, interval: float) -> Pollers:
    out = Pollers()
    n = len(pools)
    start = time.perf_counter()
    deadline = start + seconds

    async def one(i: int, pool: list[tuple[str, bytes]]) -> None:
        next_poll = start + interval * i / n  # spread the starts over one poll interval
        conn, k = Conn(port), 0
        try:
            while True:
                await asyncio.sleep(max(0.0, next_poll - time.perf_counter()))
                sent = time.perf_counter()
                if sent >= deadline:
                    return
                next_poll = sent + interval  # like WeCom: paced from the send, no catch-up burst
                tgt, body = pool[k % len(pool)]
                k += 1
                fresh, reopened = conn.writer is None, conn.reopened  # the connection opens right at the request
                try:
                    status, _ = await conn.call(tgt, body)
                except (OSError, asyncio.IncompleteReadError):
                    status = 0
                    conn.close()
                ms = (time.perf_counter() - sent) * 1000
                out.polls += 1
                if status != 200:
                    out.errors += 1
                elif fresh or conn.reopened != reopened:
                    out.first.append(ms)
                else:
                    out.latencies.append(ms)
        finally:
            out.reopened += conn.reopened
            conn.close()

    prober = asyncio.create_task(probe_lag(out.lag))
    await asyncio.gather(*(one(i, pool) for i, pool in enumerate(pools)))
    prober.cancel()
    out.duration = seconds
    return out


def pollers(port: int, pools: list[list[tuple[str, bytes]]], seconds: float, *, interval: float = 1.0) -> Pollers:
    """One keep-alive poller per pool, each sending its pre-signed requests in turn every ``interval`` s.

    A poller opens its connection right before its first request (an idle new connection would hold
    a gthread worker thread until its first request arrives), and that first request's latency is
    kept apart from the others (``first``), as is any request that had to reopen the connection.
    """
    return asyncio.run(_pollers(port, pools, seconds, interval))

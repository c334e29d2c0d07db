"""DifyClient (asyncio + aiohttp) against the Dify simulator over real HTTP on loopback (no mocked requests).

Every test runs its coroutines on its own ``LoopThread`` (the production event loop), creates its
clients there and closes them on that loop before the loop stops.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest

from services.dify import (
    ConversationDropped,
    Delta,
    DifyClient,
    DifyEvent,
    Finished,
    Replace,
    Started,
)
from services.engine.loop import LoopThread
from services.errors import (
    DifyConnectionError,
    DifyError,
    DifyHTTPError,
    DifyIncompleteError,
    DifyStreamError,
    DifyTimeout,
)
from tools import dify_sim
from tools.dify_sim import DifySimulator, Script

KEY = "app-test-key"
TRICKY = "你好！我是企业微信里的AI 助手 🤖。\u2028第二行\u2029第三段\u0085完 👨‍👩‍👧 done"

T = TypeVar("T")
MakeClient = Callable[..., DifyClient]
Run = Callable[[Coroutine[Any, Any, T]], T]


class Sleeps(list[float]):
    """An injected async ``sleep`` that records the backoff instead of sleeping."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """A private engine loop; every task on it must be finished when the test ends."""
    thread = LoopThread(name="test-dify-loop")
    thread.start()
    yield thread

    async def leftovers() -> list[asyncio.Task[Any]]:
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    try:
        assert thread.submit(leftovers()).result(10) == []
    finally:
        thread.stop()
    assert not thread.running


@pytest.fixture
def run(loop_thread: LoopThread) -> Run[Any]:
    """Run a coroutine on the test's loop and return its result (or raise its exception)."""

    def run_(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return loop_thread.submit(coro).result(timeout)

    return run_


@pytest.fixture
def make_client(dify: DifySimulator, sleeps: Sleeps, run: Run[Any]) -> Iterator[MakeClient]:
    clients: list[DifyClient] = []

    def make(**kw: Any) -> DifyClient:
        options: dict[str, Any] = {
            "read_timeout": 3.0,
            "total_timeout": 15.0,
            "idle_timeout": 5.0,
            "backoff_base": 0.01,
            "sleep": sleeps,
        }
        options.update(kw)
        client = DifyClient(options.pop("base_url", dify.url), KEY, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        run(client.close())  # on the loop that used it


async def collect(events: AsyncIterator[DifyEvent]) -> tuple[list[DifyEvent], BaseException | None]:
    """Iterate to the end; return the events seen and the exception that ended it, if any."""
    seen: list[DifyEvent] = []
    try:
        async for event in events:
            seen.append(event)
    except Exception as e:
        return seen, e
    return seen, None


async def drain(events: AsyncIterator[DifyEvent]) -> list[DifyEvent]:
    return [event async for event in events]


def text_of(events: list[DifyEvent]) -> str:
    text = ""
    for event in events:
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Replace):
            text = event.text
    return text


async def chat_ok(client: DifyClient, query: str, **kw: Any) -> list[DifyEvent]:
    events, error = await collect(client.chat(query, user="u1", **kw))
    assert error is None, repr(error)
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert sum(isinstance(e, Started) for e in events) == 1
    assert events[-1].conversation_id == events[0].conversation_id
    return events


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def _peer_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed by its handler
        return True


def sim_open_connections(sim: DifySimulator) -> int:
    """How many of the simulator's connections the client side still holds open."""
    with sim._lock:
        conns = list(sim._conns)
    return sum(not _peer_closed(conn) for conn in conns)


def sim_generating(sim: DifySimulator, task_id: str) -> bool:
    """Whether the simulator is still generating ``task_id`` (it stops at the first failed write)."""
    with sim._lock:
        return task_id in sim._tasks


# -- SSE cases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["new", "old"])
def test_old_and_new_flavours_give_the_same_text(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any], flavour: Any
) -> None:
    dify.script("hi", Script(answer=TRICKY, flavour=flavour, delta_size=3))
    events = run(chat_ok(make_client(), "hi"))
    assert text_of(events) == TRICKY
    assert [e.text for e in events if isinstance(e, Delta)] == Script(answer=TRICKY, delta_size=3).split()


@pytest.mark.parametrize(
    ("rechunk", "seed"), [("random", 0), ("random", 1), ("random", 7), ("bytewise", 0), ("merged", 0)]
)
def test_rechunked_bytes_with_cjk_emoji_and_separators(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any], rechunk: Any, seed: int
) -> None:
    dify.script("hi", Script(answer=TRICKY * 3, rechunk=rechunk, seed=seed, delta_size=1, ping_every=3))
    assert text_of(run(chat_ok(make_client(), "hi"))) == TRICKY * 3


def test_unscripted_query_is_echoed(make_client: MakeClient, run: Run[Any]) -> None:
    assert text_of(run(chat_ok(make_client(), "ping?"))) == "echo: ping?"


def test_pings_interleaved(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer="abcdefgh", ping_every=1, leading_ping=True, rechunk="random"))
    assert text_of(run(chat_ok(make_client(), "hi"))) == "abcdefgh"


def test_message_replace_overwrites_then_appending_continues(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script("hi", Script(answer="abcdef", delta_size=2, replace_at=2, replace_text="[masked]"))
    events = run(chat_ok(make_client(), "hi"))
    assert [e for e in events if isinstance(e, Delta | Replace)] == [
        Delta("ab"),
        Delta("cd"),
        Replace("[masked]"),
        Delta("ef"),
    ]
    assert text_of(events) == "[masked]ef"


@pytest.mark.parametrize("closing_message", [False, True])
def test_agent_app(dify: DifySimulator, make_client: MakeClient, run: Run[Any], closing_message: bool) -> None:
    dify.script("hi", Script(answer="现在是北京时间 10:50。", app="agent", closing_message=closing_message))
    events = run(chat_ok(make_client(), "hi"))
    assert text_of(events) == "现在是北京时间 10:50。"
    assert Delta("") not in events


def test_advanced_chat_finishes_at_workflow_finished(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script("hi", Script(answer=TRICKY, app="advanced-chat", rechunk="random"))
    client = make_client()
    started = time.monotonic()
    events = run(chat_ok(client, "hi"))
    assert text_of(events) == TRICKY
    assert time.monotonic() - started < 1.5  # did not sit out the message_end grace period


def test_advanced_chat_huge_node_frame(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer="ok", app="advanced-chat", node_payload=2_000_000))
    assert text_of(run(chat_ok(make_client(), "hi"))) == "ok"


@pytest.mark.parametrize("rechunk", ["frame", "random"])
def test_a_node_frame_past_the_bound_is_dropped_not_fatal(dify: DifySimulator, make_client: MakeClient,
                                                          run: Run[Any], rechunk: str) -> None:
    dify.script("hi", Script(answer="完整的回答", app="advanced-chat", node_payload=300_000, rechunk=rechunk))  # type: ignore[arg-type]
    assert text_of(run(chat_ok(make_client(max_frame_bytes=64 * 1024), "hi"))) == "完整的回答"


def test_a_text_frame_past_the_bound_still_fails(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer="长" * 40_000, delta_size=40_000))  # one 120 kB message frame
    events, error = run(collect(make_client(max_frame_bytes=64 * 1024).chat("hi", user="u1")))
    assert isinstance(error, DifyStreamError) and error.code == "invalid_sse"


def test_message_file_quirk(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer="图片如上所示", message_file_quirk=True))
    assert text_of(run(chat_ok(make_client(), "hi"))) == "图片如上所示"


def test_error_frame_after_partial_text(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script(
        "hi",
        Script(
            answer="好的，我来查一下",
            error_after=2,
            error_code="completion_request_error",
            error_message="[openai] Rate Limit Error",
            flavour="old",
        ),
    )
    events, error = run(collect(make_client().chat("hi", user="u1")))
    assert isinstance(error, DifyStreamError)
    assert (error.code, error.message, error.status) == (
        "completion_request_error",
        "[openai] Rate Limit Error",
        400,
    )
    assert isinstance(events[0], Started) and text_of(events) == "好的，我"
    assert len(dify.chat_requests()) == 1  # never retried after output


def test_chatflow_failure(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script(
        "hi", Script(answer="abcd", app="advanced-chat", error_after=1, error_message="division by zero")
    )
    events, error = run(collect(make_client().chat("hi", user="u1")))
    assert isinstance(error, DifyStreamError)
    assert (error.code, error.message) == ("workflow_failed", "division by zero")
    assert text_of(events) == "ab"


@pytest.mark.parametrize("abrupt", [False, True])
def test_eof_without_message_end(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any], abrupt: bool
) -> None:
    dify.script("hi", Script(answer="abcdefgh", eof_after=2, eof_abrupt=abrupt))
    events, error = run(collect(make_client().chat("hi", user="u1")))
    assert isinstance(error, DifyIncompleteError)
    assert text_of(events) == "abcd" and not any(isinstance(e, Finished) for e in events)


# -- conversations -----------------------------------------------------------------------------------


def test_stale_conversation_is_dropped_and_retried_once_without_it(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    stale = "5f3b2a9e-8c41-4d6b-9a37-0e12c4d5b6a7"
    events, error = run(collect(make_client().chat("hi", user="u1", conversation_id=stale)))
    assert error is None
    assert isinstance(events[0], ConversationDropped) and isinstance(events[1], Started)
    assert events[1].conversation_id != stale and text_of(events) == "echo: hi"
    first, second = dify.chat_requests()
    assert first.json["conversation_id"] == stale
    assert "conversation_id" not in second.json


def test_conversation_is_scoped_by_user(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    client = make_client()
    conversation = run(chat_ok(client, "one"))[-1]
    assert isinstance(conversation, Finished) and conversation.conversation_id
    again = run(chat_ok(client, "two", conversation_id=conversation.conversation_id))
    assert again[0] == Started(conversation.conversation_id, again[0].message_id, again[0].task_id)  # type: ignore[union-attr]
    other, error = run(collect(client.chat("three", user="u2", conversation_id=conversation.conversation_id)))
    assert error is None and isinstance(other[0], ConversationDropped)
    assert [r.json.get("conversation_id") for r in dify.chat_requests()] == [
        None,
        conversation.conversation_id,
        conversation.conversation_id,
        None,
    ]


def test_404_with_flask_restx_hint_is_still_a_stale_conversation(sleeps: Sleeps, run: Run[Any]) -> None:
    async def scenario(url: str) -> list[DifyEvent]:
        client = DifyClient(url, KEY, sleep=sleeps)
        try:
            return await drain(client.chat("hi", user="u", conversation_id="5f3b2a9e-8c41-4d6b-9a37-0e12c4d5b6a7"))
        finally:
            await client.close()

    with DifySimulator(restx_404_hint=True) as sim:
        events = run(scenario(sim.url))
    assert isinstance(events[0], ConversationDropped) and text_of(events) == "echo: hi"


def test_404_without_conversation_id_is_an_http_error(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script("hi", Script(http_status=404))
    with pytest.raises(DifyHTTPError) as err:
        run(drain(make_client().chat("hi", user="u1")))
    assert (err.value.status, err.value.code) == (404, "not_found")
    assert len(dify.chat_requests()) == 1


# -- HTTP errors and retries -------------------------------------------------------------------------


def test_429_too_many_requests_is_retried_with_backoff(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any], sleeps: Sleeps
) -> None:
    dify.script("hi", Script(answer="ok", http_status=429, fail_times=2))
    events = run(chat_ok(make_client(backoff_base=0.25, backoff_max=8.0), "hi"))
    assert text_of(events) == "ok"
    assert len(dify.chat_requests()) == 3
    assert sleeps == [0.25, 0.5]


def test_backoff_is_capped(dify: DifySimulator, make_client: MakeClient, run: Run[Any], sleeps: Sleeps) -> None:
    dify.script("hi", Script(http_status=503, fail_times=4))
    run(chat_ok(make_client(backoff_base=1.0, backoff_max=3.0, max_retries=5, total_timeout=60.0), "hi"))
    assert sleeps == [1.0, 2.0, 3.0, 3.0]


def test_429_rate_limit_error_is_a_quota_and_not_retried(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script(
        "hi",
        Script(
            http_status=429, error_envelope_code="rate_limit_error", error_envelope_message="Rate Limit Error"
        ),
    )
    with pytest.raises(DifyHTTPError) as err:
        run(drain(make_client().chat("hi", user="u1")))
    assert (err.value.status, err.value.code, err.value.message) == (
        429,
        "rate_limit_error",
        "Rate Limit Error",
    )
    assert len(dify.chat_requests()) == 1


@pytest.mark.parametrize("html", [False, True])
@pytest.mark.parametrize("status", [500, 502, 504])
def test_5xx_is_retried(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any], status: int, html: bool
) -> None:
    dify.script("hi", Script(answer="ok", http_status=status, html_error=html, fail_times=1))
    assert text_of(run(chat_ok(make_client(), "hi"))) == "ok"
    assert len(dify.chat_requests()) == 2


def test_html_error_gives_a_short_message(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any], sleeps: Sleeps
) -> None:
    dify.script("hi", Script(http_status=502, html_error=True))
    with pytest.raises(DifyHTTPError) as err:
        run(drain(make_client(max_retries=2).chat("hi", user="u1")))
    assert (err.value.status, err.value.code, err.value.message) == (502, "http_502", "502 Bad Gateway")
    assert len(dify.chat_requests()) == 3 and len(sleeps) == 2


def test_html_429_is_not_retried(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(http_status=429, html_error=True))
    with pytest.raises(DifyHTTPError) as err:
        run(drain(make_client().chat("hi", user="u1")))
    assert err.value.code == "http_429" and len(dify.chat_requests()) == 1


def test_400_is_not_retried(dify: DifySimulator, make_client: MakeClient, run: Run[Any], sleeps: Sleeps) -> None:
    dify.script(
        "hi",
        Script(
            http_status=400,
            error_envelope_code="app_unavailable",
            error_envelope_message="App unavailable, please check your app configurations.",
        ),
    )
    with pytest.raises(DifyHTTPError) as err:
        run(drain(make_client().chat("hi", user="u1")))
    assert (err.value.status, err.value.code) == (400, "app_unavailable")
    assert err.value.message.startswith("App unavailable")
    assert len(dify.chat_requests()) == 1 and sleeps == []


def test_retries_exhausted(dify: DifySimulator, make_client: MakeClient, run: Run[Any], sleeps: Sleeps) -> None:
    dify.script("hi", Script(http_status=500))
    with pytest.raises(DifyHTTPError) as err:
        run(drain(make_client(max_retries=2).chat("hi", user="u1")))
    assert (err.value.status, err.value.code) == (500, "internal_server_error")
    assert len(dify.chat_requests()) == 3 and len(sleeps) == 2


def test_retries_stop_at_the_total_deadline(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    now = [0.0]

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    dify.script("hi", Script(http_status=503))
    client = make_client(
        max_retries=10, backoff_base=2.0, total_timeout=5.0, clock=lambda: now[0], sleep=sleep
    )
    with pytest.raises(DifyHTTPError):
        run(drain(client.chat("hi", user="u1")))
    assert slept == [2.0]  # the next backoff (4 s) would end after the 5 s deadline
    assert len(dify.chat_requests()) == 2


def test_connection_refused(make_client: MakeClient, run: Run[Any], sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(DifyConnectionError):
        run(drain(client.chat("hi", user="u1")))
    assert len(sleeps) == 2


def test_unauthorized_is_not_retried(sleeps: Sleeps, run: Run[Any]) -> None:
    async def scenario(url: str) -> tuple[BaseException | None, list[DifyEvent]]:
        client = DifyClient(url, "app-wrong", sleep=sleeps)
        try:
            _, error = await collect(client.chat("hi", user="u"))
            return error, await drain(client.chat("hi", user="u", authorization="app-right"))
        finally:
            await client.close()

    with DifySimulator(api_keys={"app-right"}) as sim:
        error, events = run(scenario(sim.url))
    assert text_of(events) == "echo: hi"
    assert isinstance(error, DifyHTTPError)
    assert (error.status, error.code, error.message) == (
        401,
        "unauthorized",
        "Access token is invalid",
    )
    assert sleeps == []


# -- timeouts ----------------------------------------------------------------------------------------


def test_stall_longer_than_read_timeout(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer="abcd", stall=3.0))
    client = make_client(read_timeout=0.3)
    started = time.monotonic()
    events, error = run(collect(client.chat("hi", user="u1")))
    assert isinstance(error, DifyTimeout) and error.code == "read_timeout"
    assert text_of(events) == "abcd"
    assert time.monotonic() - started < 2.0


def test_total_deadline_with_a_slow_trickle(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    # One byte every few ms: the read timeout (2 s) never fires, the total deadline must.
    dify.script("hi", Script(answer="x" * 200, rechunk="bytewise", chunk_delay=0.005))
    client = make_client(read_timeout=2.0, total_timeout=0.8)
    started = time.monotonic()
    events, error = run(collect(client.chat("hi", user="u1")))
    elapsed = time.monotonic() - started
    assert isinstance(error, DifyTimeout) and "total_timeout" in error.message
    assert 0.7 < elapsed < 2.5
    assert not any(isinstance(e, Finished) for e in events)


def test_total_deadline_while_blocked_in_a_read(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script("hi", Script(answer="ab", stall=5.0))
    client = make_client(read_timeout=4.0, total_timeout=0.5)
    started = time.monotonic()
    _, error = run(collect(client.chat("hi", user="u1")))
    assert isinstance(error, DifyTimeout)
    assert time.monotonic() - started < 1.5  # the read's timeout shrank to the remaining budget


def test_pings_only_stall_hits_the_idle_timeout(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script("hi", Script(answer="ab", stall=5.0, pings_during_stall=True, ping_interval=0.05))
    client = make_client(read_timeout=1.0, idle_timeout=0.5)
    started = time.monotonic()
    events, error = run(collect(client.chat("hi", user="u1")))
    assert isinstance(error, DifyTimeout) and error.code == "idle_timeout"
    assert text_of(events) == "ab"
    assert time.monotonic() - started < 2.0


def test_pings_alone_keep_the_read_timeout_happy(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script("hi", Script(answer="ab", stall=0.8, pings_during_stall=True, ping_interval=0.1))
    assert text_of(run(chat_ok(make_client(read_timeout=0.4, idle_timeout=3.0), "hi"))) == "ab"


# -- cancel: cancelling the task that iterates chat() ------------------------------------------------


class Consumer:
    """Iterate ``chat`` in its own task, recording events and any DifyError that ends it."""

    def __init__(self, events: AsyncIterator[DifyEvent], *, signal_after: int = 0) -> None:
        self.events: list[DifyEvent] = []
        self.error: BaseException | None = None
        self.signal_after = signal_after
        self.reached = asyncio.Event()
        self.task = asyncio.ensure_future(self._consume(events))

    async def _consume(self, events: AsyncIterator[DifyEvent]) -> None:
        try:
            async for event in events:
                self.events.append(event)
                if self.signal_after and len(self.events) == self.signal_after:
                    self.reached.set()
        except DifyError as e:
            self.error = e


def test_cancel_stops_the_stream(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer="x" * 200, delta_size=1, delay=0.02))
    client = make_client()

    async def scenario() -> tuple[Consumer, int, float]:
        consumer = Consumer(client.chat("hi", user="u1"), signal_after=3)
        await asyncio.wait_for(consumer.reached.wait(), 5)
        seen = len(consumer.events)
        consumer.task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await consumer.task
        return consumer, seen, time.monotonic() - started

    consumer, seen, elapsed = run(scenario())
    assert consumer.task.cancelled() and consumer.error is None
    assert len(consumer.events) == seen and seen >= 3  # nothing more after cancel, no Finished
    assert isinstance(consumer.events[0], Started) and not any(isinstance(e, Finished) for e in consumer.events)
    assert elapsed < 0.5
    task_id = consumer.events[0].task_id
    assert wait_until(lambda: not sim_generating(dify, task_id), 2.0)  # the simulator hit the closed socket
    assert sim_open_connections(dify) == 0


def test_cancel_while_the_consumer_awaits_something_else(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    # The engine awaits Redis inside its ``async for``: a cancel there leaves chat() suspended at a
    # yield, and it is the loop's async-generator finalizer that must close the response.
    dify.script("hi", Script(answer="x" * 200, delta_size=1, delay=0.02))
    client = make_client()
    events: list[DifyEvent] = []
    busy = asyncio.Event()

    async def consume() -> None:
        async for event in client.chat("hi", user="u1"):
            events.append(event)
            if len(events) == 3:
                busy.set()
                await asyncio.sleep(30)  # e.g. a slow Redis write

    async def scenario() -> None:
        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(busy.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert len(events) == 3 and isinstance(events[0], Started)
    task_id = events[0].task_id
    assert wait_until(lambda: not sim_generating(dify, task_id), 2.0)
    assert sim_open_connections(dify) == 0


def test_cancel_from_another_thread(
    dify: DifySimulator, make_client: MakeClient, loop_thread: LoopThread
) -> None:
    dify.script("hi", Script(answer="y" * 300, delta_size=1, delay=0.01))
    client = make_client()
    box: list[Consumer] = []

    async def start() -> Consumer:
        consumer = Consumer(client.chat("hi", user="u1"))
        box.append(consumer)
        return consumer

    consumer = loop_thread.submit(start()).result(5)
    time.sleep(0.3)
    loop = loop_thread.loop
    assert loop is not None
    cancelled_at = time.monotonic()
    loop.call_soon_threadsafe(consumer.task.cancel)

    async def outcome() -> bool:
        try:
            await consumer.task
        except asyncio.CancelledError:
            return True
        return False

    assert loop_thread.submit(outcome()).result(5) is True
    assert time.monotonic() - cancelled_at < 0.5
    assert consumer.error is None and not isinstance(consumer.events[-1], Finished)
    assert 0 < len(text_of(consumer.events)) < 300
    assert isinstance(consumer.events[0], Started)
    task_id = consumer.events[0].task_id
    assert wait_until(lambda: not sim_generating(dify, task_id), 2.0)
    assert sim_open_connections(dify) == 0


def test_cancel_during_a_blocked_read_ends_at_once(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    # The read is blocked on a silent socket (no bytes for 5 s): the cancel must not wait for bytes
    # or for the read timeout, and the connection must be closed, not left to the pool.
    dify.script("hi", Script(answer="ab", stall=5.0))
    client = make_client(read_timeout=3.0)

    async def scenario() -> Consumer:
        consumer = Consumer(client.chat("hi", user="u1"), signal_after=2)  # Started, Delta("ab")
        await asyncio.wait_for(consumer.reached.wait(), 5)
        await asyncio.sleep(0.2)
        consumer.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer.task
        return consumer

    started = time.monotonic()
    consumer = run(scenario())
    assert time.monotonic() - started < 1.0
    assert consumer.error is None and text_of(consumer.events) == "ab"
    assert not isinstance(consumer.events[-1], Finished)
    assert wait_until(lambda: sim_open_connections(dify) == 0, 2.0)  # the simulator sees EOF


def test_cancel_while_waiting_for_the_response_headers(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    # Blocking mode answers only when done: the task is cancelled inside the POST itself.
    dify.script("hi", Script(answer="ab", stall=5.0))
    client = make_client(response_mode="blocking", read_timeout=3.0)

    async def scenario() -> Consumer:
        consumer = Consumer(client.chat("hi", user="u1"))
        await asyncio.sleep(0.3)
        consumer.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer.task
        return consumer

    started = time.monotonic()
    consumer = run(scenario())
    assert time.monotonic() - started < 1.0
    assert consumer.events == [] and consumer.error is None
    assert len(dify.chat_requests()) == 1
    assert wait_until(lambda: sim_open_connections(dify) == 0, 2.0)


def test_cancel_before_the_request_sends_nothing(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    client = make_client()

    async def scenario() -> Consumer:
        consumer = Consumer(client.chat("hi", user="u1"))
        consumer.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer.task
        return consumer

    consumer = run(scenario())
    assert consumer.events == [] and consumer.error is None
    time.sleep(0.1)
    assert dify.chat_requests() == []


# -- blocking mode, stop, request shape --------------------------------------------------------------


def test_blocking_mode(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer=TRICKY))
    events = run(chat_ok(make_client(response_mode="blocking"), "hi"))
    assert [type(e) for e in events] == [Started, Delta, Finished] and text_of(events) == TRICKY
    (request,) = dify.chat_requests()
    assert request.json["response_mode"] == "blocking"


def test_an_agent_app_in_blocking_mode_is_streamed_instead(dify: DifySimulator, make_client: MakeClient,
                                                           run: Run[Any]) -> None:
    dify.script("hi", Script(answer="智能体的回答", app="agent"))  # Agent apps reject blocking with a 400
    client = make_client(response_mode="blocking")
    assert text_of(run(chat_ok(client, "hi"))) == "智能体的回答"
    assert text_of(run(chat_ok(client, "hi"))) == "智能体的回答"
    modes = [r.json["response_mode"] for r in dify.chat_requests()]
    assert modes == ["blocking", "streaming", "streaming"]  # learnt once, then remembered


def test_blocking_mode_http_error(dify: DifySimulator, make_client: MakeClient, run: Run[Any]) -> None:
    dify.script("hi", Script(answer="x", http_status=400, error_envelope_code="invalid_param",
                             error_envelope_message="query is required"))
    with pytest.raises(DifyHTTPError) as err:
        run(drain(make_client(response_mode="blocking").chat("hi", user="u1")))
    assert (err.value.status, err.value.code) == (400, "invalid_param")


def test_stop_posts_to_the_task_and_ends_the_stream(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    dify.script("hi", Script(answer="z" * 200, delta_size=1, delay=0.02))
    client = make_client()

    async def scenario() -> list[DifyEvent]:
        events: list[DifyEvent] = []
        async for event in client.chat("hi", user="u1"):
            events.append(event)
            if len(events) == 3:
                assert isinstance(events[0], Started)
                await client.stop(events[0].task_id, user="u1")
        return events

    events = run(scenario())
    assert isinstance(events[-1], Finished)  # Dify ends a stopped stream with message_end
    assert len(text_of(events)) < 200
    (stop,) = dify.stop_requests()
    assert isinstance(events[0], Started)
    assert stop.path == f"/v1/chat-messages/{events[0].task_id}/stop"
    assert stop.json == {"user": "u1"} and stop.headers["authorization"] == f"Bearer {KEY}"


def test_stop_http_error(make_client: MakeClient, run: Run[Any]) -> None:
    with pytest.raises(DifyHTTPError) as err:
        run(make_client().stop("some-task", user=""))
    assert (err.value.status, err.value.code) == (400, "invalid_param")


def test_request_shape_and_authorization_override(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    client = make_client()
    run(chat_ok(client, "first"))
    run(chat_ok(client, "second", inputs={"name": "张三", "n": 2}, authorization="app-other"))
    first, second = dify.chat_requests()
    assert first.json == {"query": "first", "inputs": {}, "response_mode": "streaming", "user": "u1"}
    assert list(first.json) == ["query", "inputs", "response_mode", "user"]
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.headers["content-type"] == "application/json"
    assert second.json["inputs"] == {"name": "张三", "n": 2}
    assert second.headers["authorization"] == "Bearer app-other"


@pytest.mark.parametrize(
    "kw",
    [
        {"response_mode": "fast"},
        {"read_timeout": 0},
        {"total_timeout": -1},
        {"max_retries": -1},
        {"max_connections": 0},
    ],
)
def test_invalid_configuration(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DifyClient("http://127.0.0.1:9/v1", KEY, **kw)


# -- one client, one loop, many answers at once ------------------------------------------------------


class Gauge:
    """Count the streams between their Started and their end; remember the peak."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    async def chat(self, client: DifyClient, query: str) -> list[DifyEvent]:
        events: list[DifyEvent] = []
        counted = False
        try:
            async for event in client.chat(query, user="u1"):
                if isinstance(event, Started):
                    counted = True
                    self.now += 1
                    self.peak = max(self.peak, self.now)
                events.append(event)
        finally:
            self.now -= counted
        return events


def test_fifty_concurrent_streams_on_one_client(
    monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps, run: Run[Any]
) -> None:
    # A private simulator with a listen backlog of at least 128 (socketserver's default is 5: a burst of
    # 50 connects then loses SYNs and some streams start only after the kernel's 1/3/7 s retransmits).
    monkeypatch.setattr(dify_sim._Server, "request_queue_size", max(128, dify_sim._Server.request_queue_size))
    n = 50
    gauge = Gauge()

    async def scenario(url: str) -> list[list[DifyEvent]]:
        client = DifyClient(url, KEY, sleep=sleeps)
        try:
            return await asyncio.gather(*(gauge.chat(client, f"q{i}") for i in range(n)))
        finally:
            await client.close()

    with DifySimulator() as sim:
        for i in range(n):
            sim.script(f"q{i}", Script(answer=f"#{i} {TRICKY}", delta_size=3, delay=0.02, rechunk="random", seed=i))
        answers = run(scenario(sim.url))
        requests = sim.chat_requests()
    for i, events in enumerate(answers):
        assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
        assert text_of(events) == f"#{i} {TRICKY}"
    assert len({events[0].conversation_id for events in answers}) == n  # type: ignore[union-attr]
    assert len(requests) == n and sleeps == []  # no retries
    assert gauge.peak > n // 2  # they really streamed at the same time


def test_max_connections_limits_concurrent_streams(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    n, limit = 6, 2
    for i in range(n):
        dify.script(f"q{i}", Script(answer=f"answer {i:03d}", delta_size=1, delay=0.03))  # ~0.3 s each
    client = make_client(max_connections=limit)
    gauge = Gauge()

    async def scenario() -> list[list[DifyEvent]]:
        return await asyncio.gather(*(gauge.chat(client, f"q{i}") for i in range(n)))

    started = time.monotonic()
    answers = run(scenario())
    elapsed = time.monotonic() - started
    assert [text_of(events) for events in answers] == [f"answer {i:03d}" for i in range(n)]
    assert gauge.peak == limit
    assert elapsed > (n / limit) * 0.25  # three waves, not one
    requests = sorted(r.time for r in dify.chat_requests())
    assert len(requests) == n and requests[limit] - requests[0] > 0.2  # the third waited for a slot


def test_a_closed_client_can_be_used_again_on_its_loop(
    dify: DifySimulator, make_client: MakeClient, run: Run[Any]
) -> None:
    client = make_client()
    assert text_of(run(chat_ok(client, "one"))) == "echo: one"
    run(client.close())
    assert text_of(run(chat_ok(client, "two"))) == "echo: two"


def test_a_session_passed_in_is_not_closed(dify: DifySimulator, run: Run[Any]) -> None:
    async def scenario() -> bool:
        async with aiohttp.ClientSession() as session:
            client = DifyClient(dify.url, KEY, session=session)
            assert text_of(await chat_ok(client, "hi")) == "echo: hi"
            await client.close()
            return session.closed

    assert run(scenario()) is False


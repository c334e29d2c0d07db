"""DifyClient against the Dify simulator over real HTTP on loopback (no mocked requests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.dify_service import (
    ConversationDropped,
    Delta,
    DifyClient,
    DifyEvent,
    Finished,
    Replace,
    Started,
)
from services.errors import (
    DifyConnectionError,
    DifyHTTPError,
    DifyIncompleteError,
    DifyStreamError,
    DifyTimeout,
)
from tools.dify_sim import DifySimulator, Script

KEY = "app-test-key"
TRICKY = "你好！我是企业微信里的AI 助手 🤖。\u2028第二行\u2029第三段\u0085完 👨‍👩‍👧 done"

MakeClient = Callable[..., DifyClient]


class Sleeps(list[float]):
    """An injected ``sleep`` that records the backoff instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_client(dify: DifySimulator, sleeps: Sleeps) -> Iterator[MakeClient]:
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
        client.close()


def collect(events: Iterator[DifyEvent]) -> tuple[list[DifyEvent], BaseException | None]:
    """Iterate to the end; return the events seen and the exception that ended it, if any."""
    seen: list[DifyEvent] = []
    try:
        for event in events:
            seen.append(event)
    except Exception as e:
        return seen, e
    return seen, None


def text_of(events: list[DifyEvent]) -> str:
    text = ""
    for event in events:
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Replace):
            text = event.text
    return text


def chat_ok(client: DifyClient, query: str, **kw: Any) -> list[DifyEvent]:
    events, error = collect(client.chat(query, user="u1", **kw))
    assert error is None, repr(error)
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert sum(isinstance(e, Started) for e in events) == 1
    assert events[-1].conversation_id == events[0].conversation_id
    return events


# -- SSE cases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["new", "old"])
def test_old_and_new_flavours_give_the_same_text(
    dify: DifySimulator, make_client: MakeClient, flavour: Any
) -> None:
    dify.script("hi", Script(answer=TRICKY, flavour=flavour, delta_size=3))
    events = chat_ok(make_client(), "hi")
    assert text_of(events) == TRICKY
    assert [e.text for e in events if isinstance(e, Delta)] == Script(answer=TRICKY, delta_size=3).split()


@pytest.mark.parametrize(
    ("rechunk", "seed"), [("random", 0), ("random", 1), ("random", 7), ("bytewise", 0), ("merged", 0)]
)
def test_rechunked_bytes_with_cjk_emoji_and_separators(
    dify: DifySimulator, make_client: MakeClient, rechunk: Any, seed: int
) -> None:
    dify.script("hi", Script(answer=TRICKY * 3, rechunk=rechunk, seed=seed, delta_size=1, ping_every=3))
    assert text_of(chat_ok(make_client(), "hi")) == TRICKY * 3


def test_unscripted_query_is_echoed(make_client: MakeClient) -> None:
    assert text_of(chat_ok(make_client(), "ping?")) == "echo: ping?"


def test_pings_interleaved(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="abcdefgh", ping_every=1, leading_ping=True, rechunk="random"))
    assert text_of(chat_ok(make_client(), "hi")) == "abcdefgh"


def test_message_replace_overwrites_then_appending_continues(
    dify: DifySimulator, make_client: MakeClient
) -> None:
    dify.script("hi", Script(answer="abcdef", delta_size=2, replace_at=2, replace_text="[masked]"))
    events = chat_ok(make_client(), "hi")
    assert [e for e in events if isinstance(e, Delta | Replace)] == [
        Delta("ab"),
        Delta("cd"),
        Replace("[masked]"),
        Delta("ef"),
    ]
    assert text_of(events) == "[masked]ef"


@pytest.mark.parametrize("closing_message", [False, True])
def test_agent_app(dify: DifySimulator, make_client: MakeClient, closing_message: bool) -> None:
    dify.script("hi", Script(answer="现在是北京时间 10:50。", app="agent", closing_message=closing_message))
    events = chat_ok(make_client(), "hi")
    assert text_of(events) == "现在是北京时间 10:50。"
    assert Delta("") not in events


def test_advanced_chat_finishes_at_workflow_finished(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer=TRICKY, app="advanced-chat", rechunk="random"))
    started = time.monotonic()
    events = chat_ok(make_client(), "hi")
    assert text_of(events) == TRICKY
    assert time.monotonic() - started < 1.5  # did not sit out the message_end grace period


def test_advanced_chat_huge_node_frame(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="ok", app="advanced-chat", node_payload=2_000_000))
    assert text_of(chat_ok(make_client(), "hi")) == "ok"


def test_message_file_quirk(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="图片如上所示", message_file_quirk=True))
    assert text_of(chat_ok(make_client(), "hi")) == "图片如上所示"


def test_error_frame_after_partial_text(dify: DifySimulator, make_client: MakeClient) -> None:
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
    events, error = collect(make_client().chat("hi", user="u1"))
    assert isinstance(error, DifyStreamError)
    assert (error.code, error.message, error.status) == (
        "completion_request_error",
        "[openai] Rate Limit Error",
        400,
    )
    assert isinstance(events[0], Started) and text_of(events) == "好的，我"
    assert len(dify.chat_requests()) == 1  # never retried after output


def test_chatflow_failure(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script(
        "hi", Script(answer="abcd", app="advanced-chat", error_after=1, error_message="division by zero")
    )
    events, error = collect(make_client().chat("hi", user="u1"))
    assert isinstance(error, DifyStreamError)
    assert (error.code, error.message) == ("workflow_failed", "division by zero")
    assert text_of(events) == "ab"


@pytest.mark.parametrize("abrupt", [False, True])
def test_eof_without_message_end(dify: DifySimulator, make_client: MakeClient, abrupt: bool) -> None:
    dify.script("hi", Script(answer="abcdefgh", eof_after=2, eof_abrupt=abrupt))
    events, error = collect(make_client().chat("hi", user="u1"))
    assert isinstance(error, DifyIncompleteError)
    assert text_of(events) == "abcd" and not any(isinstance(e, Finished) for e in events)


# -- conversations -----------------------------------------------------------------------------------


def test_stale_conversation_is_dropped_and_retried_once_without_it(
    dify: DifySimulator, make_client: MakeClient
) -> None:
    stale = "5f3b2a9e-8c41-4d6b-9a37-0e12c4d5b6a7"
    events, error = collect(make_client().chat("hi", user="u1", conversation_id=stale))
    assert error is None
    assert isinstance(events[0], ConversationDropped) and isinstance(events[1], Started)
    assert events[1].conversation_id != stale and text_of(events) == "echo: hi"
    first, second = dify.chat_requests()
    assert first.json["conversation_id"] == stale
    assert "conversation_id" not in second.json


def test_conversation_is_scoped_by_user(dify: DifySimulator, make_client: MakeClient) -> None:
    client = make_client()
    conversation = chat_ok(client, "one")[-1]
    assert isinstance(conversation, Finished) and conversation.conversation_id
    again = chat_ok(client, "two", conversation_id=conversation.conversation_id)
    assert again[0] == Started(conversation.conversation_id, again[0].message_id, again[0].task_id)  # type: ignore[union-attr]
    other, error = collect(client.chat("three", user="u2", conversation_id=conversation.conversation_id))
    assert error is None and isinstance(other[0], ConversationDropped)
    assert [r.json.get("conversation_id") for r in dify.chat_requests()] == [
        None,
        conversation.conversation_id,
        conversation.conversation_id,
        None,
    ]


def test_404_with_flask_restx_hint_is_still_a_stale_conversation(sleeps: Sleeps) -> None:
    with DifySimulator(restx_404_hint=True) as sim:
        client = DifyClient(sim.url, KEY, sleep=sleeps)
        try:
            events = list(client.chat("hi", user="u", conversation_id="5f3b2a9e-8c41-4d6b-9a37-0e12c4d5b6a7"))
        finally:
            client.close()
    assert isinstance(events[0], ConversationDropped) and text_of(events) == "echo: hi"


def test_404_without_conversation_id_is_an_http_error(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(http_status=404))
    with pytest.raises(DifyHTTPError) as err:
        list(make_client().chat("hi", user="u1"))
    assert (err.value.status, err.value.code) == (404, "not_found")
    assert len(dify.chat_requests()) == 1


# -- HTTP errors and retries -------------------------------------------------------------------------


def test_429_too_many_requests_is_retried_with_backoff(
    dify: DifySimulator, make_client: MakeClient, sleeps: Sleeps
) -> None:
    dify.script("hi", Script(answer="ok", http_status=429, fail_times=2))
    events = chat_ok(make_client(backoff_base=0.25, backoff_max=8.0), "hi")
    assert text_of(events) == "ok"
    assert len(dify.chat_requests()) == 3
    assert sleeps == [0.25, 0.5]


def test_backoff_is_capped(dify: DifySimulator, make_client: MakeClient, sleeps: Sleeps) -> None:
    dify.script("hi", Script(http_status=503, fail_times=4))
    chat_ok(make_client(backoff_base=1.0, backoff_max=3.0, max_retries=5, total_timeout=60.0), "hi")
    assert sleeps == [1.0, 2.0, 3.0, 3.0]


def test_429_rate_limit_error_is_a_quota_and_not_retried(
    dify: DifySimulator, make_client: MakeClient
) -> None:
    dify.script(
        "hi",
        Script(
            http_status=429, error_envelope_code="rate_limit_error", error_envelope_message="Rate Limit Error"
        ),
    )
    with pytest.raises(DifyHTTPError) as err:
        list(make_client().chat("hi", user="u1"))
    assert (err.value.status, err.value.code, err.value.message) == (
        429,
        "rate_limit_error",
        "Rate Limit Error",
    )
    assert len(dify.chat_requests()) == 1


@pytest.mark.parametrize("html", [False, True])
@pytest.mark.parametrize("status", [500, 502, 504])
def test_5xx_is_retried(dify: DifySimulator, make_client: MakeClient, status: int, html: bool) -> None:
    dify.script("hi", Script(answer="ok", http_status=status, html_error=html, fail_times=1))
    assert text_of(chat_ok(make_client(), "hi")) == "ok"
    assert len(dify.chat_requests()) == 2


def test_html_error_gives_a_short_message(
    dify: DifySimulator, make_client: MakeClient, sleeps: Sleeps
) -> None:
    dify.script("hi", Script(http_status=502, html_error=True))
    with pytest.raises(DifyHTTPError) as err:
        list(make_client(max_retries=2).chat("hi", user="u1"))
    assert (err.value.status, err.value.code, err.value.message) == (502, "http_502", "502 Bad Gateway")
    assert len(dify.chat_requests()) == 3 and len(sleeps) == 2


def test_html_429_is_not_retried(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(http_status=429, html_error=True))
    with pytest.raises(DifyHTTPError) as err:
        list(make_client().chat("hi", user="u1"))
    assert err.value.code == "http_429" and len(dify.chat_requests()) == 1


def test_400_is_not_retried(dify: DifySimulator, make_client: MakeClient, sleeps: Sleeps) -> None:
    dify.script(
        "hi",
        Script(
            http_status=400,
            error_envelope_code="app_unavailable",
            error_envelope_message="App unavailable, please check your app configurations.",
        ),
    )
    with pytest.raises(DifyHTTPError) as err:
        list(make_client().chat("hi", user="u1"))
    assert (err.value.status, err.value.code) == (400, "app_unavailable")
    assert err.value.message.startswith("App unavailable")
    assert len(dify.chat_requests()) == 1 and sleeps == []


def test_retries_exhausted(dify: DifySimulator, make_client: MakeClient, sleeps: Sleeps) -> None:
    dify.script("hi", Script(http_status=500))
    with pytest.raises(DifyHTTPError) as err:
        list(make_client(max_retries=2).chat("hi", user="u1"))
    assert (err.value.status, err.value.code) == (500, "internal_server_error")
    assert len(dify.chat_requests()) == 3 and len(sleeps) == 2


def test_retries_stop_at_the_total_deadline(dify: DifySimulator, make_client: MakeClient) -> None:
    now = [0.0]

    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    dify.script("hi", Script(http_status=503))
    client = make_client(
        max_retries=10, backoff_base=2.0, total_timeout=5.0, clock=lambda: now[0], sleep=sleep
    )
    with pytest.raises(DifyHTTPError):
        list(client.chat("hi", user="u1"))
    assert slept == [2.0]  # the next backoff (4 s) would end after the 5 s deadline
    assert len(dify.chat_requests()) == 2


def test_connection_refused(make_client: MakeClient, sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(DifyConnectionError):
        list(client.chat("hi", user="u1"))
    assert len(sleeps) == 2


def test_unauthorized_is_not_retried(sleeps: Sleeps) -> None:
    with DifySimulator(api_keys={"app-right"}) as sim:
        client = DifyClient(sim.url, "app-wrong", sleep=sleeps)
        try:
            with pytest.raises(DifyHTTPError) as err:
                list(client.chat("hi", user="u"))
            assert text_of(list(client.chat("hi", user="u", authorization="app-right"))) == "echo: hi"
        finally:
            client.close()
    assert (err.value.status, err.value.code, err.value.message) == (
        401,
        "unauthorized",
        "Access token is invalid",
    )
    assert sleeps == []


# -- timeouts and cancel -----------------------------------------------------------------------------


def test_stall_longer_than_read_timeout(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="abcd", stall=3.0))
    started = time.monotonic()
    events, error = collect(make_client(read_timeout=0.3).chat("hi", user="u1"))
    assert isinstance(error, DifyTimeout) and error.code == "read_timeout"
    assert text_of(events) == "abcd"
    assert time.monotonic() - started < 2.0


def test_total_deadline_with_a_slow_trickle(dify: DifySimulator, make_client: MakeClient) -> None:
    # One byte every few ms: the read timeout (2 s) never fires, the total deadline must.
    dify.script("hi", Script(answer="x" * 200, rechunk="bytewise", chunk_delay=0.005))
    started = time.monotonic()
    events, error = collect(make_client(read_timeout=2.0, total_timeout=0.8).chat("hi", user="u1"))
    elapsed = time.monotonic() - started
    assert isinstance(error, DifyTimeout) and "total_timeout" in error.message
    assert 0.7 < elapsed < 2.5
    assert not any(isinstance(e, Finished) for e in events)


def test_total_deadline_while_blocked_in_a_read(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="ab", stall=5.0))
    started = time.monotonic()
    _, error = collect(make_client(read_timeout=4.0, total_timeout=0.5).chat("hi", user="u1"))
    assert isinstance(error, DifyTimeout)
    assert time.monotonic() - started < 1.5  # the socket timeout shrank to the remaining budget


def test_pings_only_stall_hits_the_idle_timeout(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="ab", stall=5.0, pings_during_stall=True, ping_interval=0.05))
    started = time.monotonic()
    events, error = collect(make_client(read_timeout=1.0, idle_timeout=0.5).chat("hi", user="u1"))
    assert isinstance(error, DifyTimeout) and error.code == "idle_timeout"
    assert text_of(events) == "ab"
    assert time.monotonic() - started < 2.0


def test_pings_alone_keep_the_read_timeout_happy(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="ab", stall=0.8, pings_during_stall=True, ping_interval=0.1))
    assert text_of(chat_ok(make_client(read_timeout=0.4, idle_timeout=3.0), "hi")) == "ab"


def test_cancel_stops_the_stream(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="x" * 200, delta_size=1, delay=0.02))
    cancel = threading.Event()
    events: list[DifyEvent] = []
    started = time.monotonic()
    for event in make_client().chat("hi", user="u1", cancel=cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    assert len(events) == 3  # nothing more after cancel, no exception, no Finished
    assert time.monotonic() - started < 2.0


def test_cancel_set_by_another_thread(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="y" * 300, delta_size=1, delay=0.01))
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    try:
        events, error = collect(make_client().chat("hi", user="u1", cancel=cancel))
    finally:
        timer.cancel()
    assert error is None and not isinstance(events[-1], Finished)
    assert 0 < len(text_of(events)) < 300


def test_cancel_during_a_blocked_read_ends_quietly(dify: DifySimulator, make_client: MakeClient) -> None:
    # A read blocked on a silent socket sees the cancel at the next bytes or at the read timeout;
    # either way the call ends without an exception (with Dify, pings arrive every 10 s).
    dify.script("hi", Script(answer="ab", stall=5.0))
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        events, error = collect(make_client(read_timeout=0.6).chat("hi", user="u1", cancel=cancel))
    finally:
        timer.cancel()
    assert error is None and text_of(events) == "ab" and not isinstance(events[-1], Finished)
    assert time.monotonic() - started < 2.0


def test_cancel_before_the_request_sends_nothing(dify: DifySimulator, make_client: MakeClient) -> None:
    cancel = threading.Event()
    cancel.set()
    assert list(make_client().chat("hi", user="u1", cancel=cancel)) == []
    assert dify.chat_requests() == []


# -- blocking mode, stop, request shape --------------------------------------------------------------


def test_blocking_mode(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer=TRICKY))
    events = chat_ok(make_client(response_mode="blocking"), "hi")
    assert [type(e) for e in events] == [Started, Delta, Finished] and text_of(events) == TRICKY
    (request,) = dify.chat_requests()
    assert request.json["response_mode"] == "blocking"


def test_blocking_mode_http_error(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="x", app="agent"))
    with pytest.raises(DifyHTTPError) as err:
        list(make_client(response_mode="blocking").chat("hi", user="u1"))
    assert (err.value.status, err.value.code) == (400, "invalid_param")


def test_stop_posts_to_the_task_and_ends_the_stream(dify: DifySimulator, make_client: MakeClient) -> None:
    dify.script("hi", Script(answer="z" * 200, delta_size=1, delay=0.02))
    client = make_client()
    events: list[DifyEvent] = []
    for event in client.chat("hi", user="u1"):
        events.append(event)
        if len(events) == 3:
            assert isinstance(events[0], Started)
            client.stop(events[0].task_id, user="u1")
    assert isinstance(events[-1], Finished)  # Dify ends a stopped stream with message_end
    assert len(text_of(events)) < 200
    (stop,) = dify.stop_requests()
    assert isinstance(events[0], Started)
    assert stop.path == f"/v1/chat-messages/{events[0].task_id}/stop"
    assert stop.json == {"user": "u1"} and stop.headers["authorization"] == f"Bearer {KEY}"


def test_stop_http_error(make_client: MakeClient) -> None:
    with pytest.raises(DifyHTTPError) as err:
        make_client().stop("some-task", user="")
    assert (err.value.status, err.value.code) == (400, "invalid_param")


def test_request_shape_and_authorization_override(dify: DifySimulator, make_client: MakeClient) -> None:
    client = make_client()
    chat_ok(client, "first")
    chat_ok(client, "second", inputs={"name": "张三", "n": 2}, authorization="app-other")
    first, second = dify.chat_requests()
    assert first.json == {"query": "first", "inputs": {}, "response_mode": "streaming", "user": "u1"}
    assert list(first.json) == ["query", "inputs", "response_mode", "user"]
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.headers["content-type"] == "application/json"
    assert second.json["inputs"] == {"name": "张三", "n": 2}
    assert second.headers["authorization"] == "Bearer app-other"


@pytest.mark.parametrize(
    "kw", [{"response_mode": "fast"}, {"read_timeout": 0}, {"total_timeout": -1}, {"max_retries": -1}]
)
def test_invalid_configuration(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DifyClient("http://127.0.0.1:9/v1", KEY, **kw)

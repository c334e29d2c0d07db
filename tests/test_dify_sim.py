"""The Dify simulator's wire format, checked on raw bytes with http.client (no client code involved)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tools.dify_sim import DifySimulator, Script

PREFIX = ["event", "conversation_id", "message_id", "created_at"]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def connect(sim: DifySimulator) -> http.client.HTTPConnection:
    url = urlsplit(sim.url)
    return http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)


def post(sim: DifySimulator, path: str, body: Any, auth: str | None = "Bearer k") -> Reply:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    conn = connect(sim)
    try:
        conn.request("POST", "/v1" + path, json.dumps(body).encode(), headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def stream(sim: DifySimulator, query: str, **extra: Any) -> Reply:
    body = {"query": query, "inputs": {}, "response_mode": "streaming", "user": "u1", **extra}
    return post(sim, "/chat-messages", body)


def data_frames(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(f[len(b"data: ") :]) for f in raw.split(b"\n\n") if f.startswith(b"data: ")]


def test_new_flavour_bytes(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="你好\u2028🤖", delta_size=3))
    reply = stream(dify, "q")
    raw = reply.body
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert reply.headers["Transfer-Encoding"] == "chunked"
    assert raw.endswith(b"\n\n") and b"event: ping" not in raw
    assert '"answer":"你好\u2028"'.encode() in raw  # compact, raw UTF-8, U+2028 unescaped
    frames = data_frames(raw)
    assert [f["event"] for f in frames] == ["message", "message", "message_end"]
    assert list(frames[0]) == [*PREFIX, "task_id", "id", "answer", "from_variable_selector"]
    assert list(frames[-1]) == [*PREFIX, "task_id", "id", "metadata", "files"]
    assert frames[0]["id"] == frames[0]["message_id"]
    assert len({(f["conversation_id"], f["message_id"], f["task_id"], f["created_at"]) for f in frames}) == 1


def test_old_flavour_bytes(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="好的", flavour="old"))
    raw = stream(dify, "q").body
    assert raw.isascii()
    assert b'data: {"event": "message", "conversation_id": ' in raw
    assert b'"answer": "\\u597d\\u7684"' in raw


def test_ping_frames_have_no_data_line(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="abcd", ping_every=1, leading_ping=True))
    raw = stream(dify, "q").body
    assert raw.startswith(b"event: ping\n\ndata: ")
    assert raw.count(b"event: ping\n\n") == 3  # leading + after each text frame, none after message_end


def test_advanced_chat_sequence(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="abcd", app="advanced-chat"))
    raw = stream(dify, "q").body
    assert raw.startswith(b"event: ping\n\n")
    events = [f["event"] for f in data_frames(raw)]
    assert events == [
        "workflow_started",
        "node_started",
        "node_finished",
        "node_started",
        "message",
        "message",
        "node_finished",
        "message_end",
        "workflow_finished",
    ]
    frames = data_frames(raw)
    assert list(frames[0]) == [*PREFIX, "task_id", "workflow_run_id", "data"]
    assert frames[0]["data"]["inputs"]["sys.query"] == "q"
    assert frames[4]["from_variable_selector"] == ["llm", "text"]
    assert frames[-1]["data"]["status"] == "succeeded"


def test_agent_sequence(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="abcd", app="agent", closing_message=True))
    events = [f["event"] for f in data_frames(stream(dify, "q").body)]
    assert events == [
        "agent_thought",
        "agent_message",
        "agent_message",
        "agent_message",
        "agent_thought",
        "message",
        "message_end",
    ]


def test_error_frame_shape(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="abcd", error_after=1, error_code="invalid_param", error_message="bad"))
    frames = data_frames(stream(dify, "q").body)
    assert list(frames[-1]) == [*PREFIX, "code", "status", "message"]
    assert frames[-1]["code"] == "invalid_param" and frames[-1]["status"] == 400


def test_message_replace_shape(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="abcd", replace_at=1, replace_text="X"))
    frames = data_frames(stream(dify, "q").body)
    assert [f["event"] for f in frames] == ["message", "message_replace", "message", "message_end"]
    assert list(frames[1]) == [*PREFIX, "task_id", "answer", "reason"]


def test_blocking_body(dify: DifySimulator) -> None:
    dify.script("q", Script(answer="你好"))
    body = {"query": "q", "inputs": {}, "user": "u1"}  # no response_mode → blocking, as in Dify
    reply = post(dify, "/chat-messages", body)
    raw = reply.body
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    assert b'"answer": "\\u4f60\\u597d"' in raw
    assert list(json.loads(raw)) == [
        "event",
        "task_id",
        "id",
        "message_id",
        "conversation_id",
        "mode",
        "answer",
        "metadata",
        "created_at",
    ]


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (None, "Authorization header must be provided and start with 'Bearer'"),
        ("Bearer", "Authorization header must be provided and start with 'Bearer'"),
        ("Basic abc", "Authorization scheme must be 'Bearer'"),
    ],
)
def test_auth_errors(dify: DifySimulator, auth: str | None, message: str) -> None:
    reply = post(dify, "/chat-messages", {"query": "q", "inputs": {}, "user": "u"}, auth=auth)
    assert reply.status == 401 and reply.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert json.loads(reply.body) == {"code": "unauthorized", "message": message, "status": 401}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "q", "inputs": {}}, "Arg user must be provided."),
        ({"query": "q", "inputs": {}, "user": ""}, "Arg user must be provided."),
        ({"query": "", "inputs": {}, "user": "u"}, "query is required"),
        (
            {"query": "q", "inputs": {}, "user": "u", "conversation_id": "nope"},
            "conversation_id must be a valid UUID",
        ),
    ],
)
def test_validation_errors(dify: DifySimulator, body: dict[str, Any], message: str) -> None:
    reply = post(dify, "/chat-messages", body)
    assert reply.status == 400
    assert json.loads(reply.body) == {"code": "invalid_param", "message": message, "status": 400}


def test_html_error_page(dify: DifySimulator) -> None:
    dify.script("q", Script(http_status=504, html_error=True, fail_times=1))
    body = {"query": "q", "inputs": {}, "response_mode": "streaming", "user": "u"}
    reply = post(dify, "/chat-messages", body)
    assert reply.status == 504 and reply.headers["Content-Type"] == "text/html"
    assert b"<title>504 Gateway Timeout</title>" in reply.body
    assert post(dify, "/chat-messages", body).status == 200  # fail_times=1: the second request succeeds


def test_conversations_are_per_user(dify: DifySimulator) -> None:
    conversation = data_frames(stream(dify, "q").body)[0]["conversation_id"]
    reply = stream(dify, "q", conversation_id=conversation)
    assert reply.status == 200 and data_frames(reply.body)[0]["conversation_id"] == conversation
    reply = stream(dify, "q", conversation_id=conversation, user="someone-else")
    assert reply.status == 404
    assert json.loads(reply.body) == {
        "code": "not_found",
        "message": "Conversation Not Exists.",
        "status": 404,
    }


def test_stop_of_another_user_is_a_silent_no_op(dify: DifySimulator) -> None:
    reply = post(dify, "/chat-messages/unknown-task/stop", {"user": "u"})
    assert reply.status == 200 and json.loads(reply.body) == {"result": "success"}
    (request,) = dify.stop_requests()
    assert request.path == "/v1/chat-messages/unknown-task/stop" and request.json == {"user": "u"}


def test_client_disconnect_is_quiet(
    dify: DifySimulator, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    dify.script("slow", Script(answer="x" * 100, delta_size=1, delay=0.01))
    url = urlsplit(dify.url)
    with caplog.at_level(logging.DEBUG, logger="tools.dify_sim"):
        with socket.create_connection((url.hostname or "", url.port or 0), timeout=5) as sock:
            body = json.dumps({"query": "slow", "inputs": {}, "response_mode": "streaming", "user": "u"})
            sock.sendall(
                f"POST /v1/chat-messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        time.sleep(0.3)  # let the server hit the broken pipe
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err
    assert stream(dify, "q").status == 200  # still serving


def test_start_stop_and_loopback_only() -> None:
    with pytest.raises(ValueError):
        DifySimulator(host="0.0.0.0")
    sim = DifySimulator()
    with pytest.raises(RuntimeError):
        _ = sim.url
    with sim:
        assert sim.url.startswith("http://127.0.0.1:") and sim.url.endswith("/v1")


@pytest.fixture
def slow_sim() -> Iterator[DifySimulator]:
    sim = DifySimulator(default=Script(delay=0.5, answer="abcdefgh")).start()
    yield sim
    sim.stop()


def test_stop_cuts_open_streams_quickly(slow_sim: DifySimulator) -> None:
    conn = connect(slow_sim)
    try:
        body = {"query": "q", "inputs": {}, "response_mode": "streaming", "user": "u"}
        conn.request("POST", "/v1/chat-messages", json.dumps(body), {"Authorization": "Bearer k"})
        resp = conn.getresponse()
        assert resp.status == 200
        started = time.monotonic()
        slow_sim.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()

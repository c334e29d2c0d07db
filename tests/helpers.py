"""Drive the in-process app exactly as WeCom would: encrypted callbacks and stream polls."""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask.testing import FlaskClient

from tools.wecom_client import WeComSigner, stream_refresh


class InProcessWeCom:
    """Send callbacks through Flask's test client and open the encrypted replies."""

    def __init__(self, client: FlaskClient, signer: WeComSigner, path: str = "/wecom/callback") -> None:
        self.client = client
        self.signer = signer
        self.path = path

    def send(self, payload: dict[str, Any] | str) -> dict[str, Any] | None:
        """POST one callback; return the decrypted reply or None for an empty body."""
        req = self.signer.callback(payload)
        resp = self.client.post(f"{self.path}?" + req.query_string, data=req.body,
                                content_type="application/json")
        assert resp.status_code == 200, (resp.status_code, resp.data)
        if not resp.data:
            return None
        return self.signer.open_reply(resp.data, req)

    def poll(self, sid: str) -> dict[str, Any]:
        """One stream refresh."""
        reply = self.send(stream_refresh(sid))
        assert reply is not None
        return reply

    def until_text(self, sid: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the stream shows some text; return that frame."""
        deadline = time.monotonic() + timeout
        while not (frame := self.poll(sid))["stream"]["content"]:
            assert time.monotonic() < deadline, f"stream {sid} showed no text in {timeout}s"
            time.sleep(0.05)
        return frame

    def until_finished(self, sid: str, *, interval: float = 0.05, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``finish``; return every frame."""
        frames = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.poll(sid)
            frames.append(frame)
            if frame["stream"]["finish"]:
                return frames
            time.sleep(interval)
        raise AssertionError(f"stream {sid} did not finish in {timeout}s: {frames[-1]}")


def message(msgtype: str, body: Any, **extra: Any) -> dict[str, Any]:
    """A user's message callback of ``msgtype`` carrying ``body`` (wecom-protocol.md §1.4)."""
    return {"msgid": extra.pop("msgid", uuid.uuid4().hex), "aibotid": "AIBOTID", "chattype": "single",
            "from": {"userid": "zhangsan"}, "msgtype": msgtype, msgtype: body, **extra}


def contents(frames: list[dict[str, Any]]) -> list[str]:
    """The ``stream.content`` of each frame."""
    return [f["stream"]["content"] for f in frames]


def assert_prefix_chain(frames: list[dict[str, Any]]) -> None:
    """Every frame's content is a prefix of the next one's."""
    texts = contents(frames)
    for a, b in zip(texts, texts[1:], strict=False):
        assert b.startswith(a), (a, b)


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")

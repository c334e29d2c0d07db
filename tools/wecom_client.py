"""Act as WeCom: build signed, encrypted callbacks and open the bot's encrypted replies.

Used by the tests and by ``python -m tools.wecom_sim``; built only on ``crypto/``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from crypto import WeComCrypto


@dataclass(frozen=True)
class SignedRequest:
    """A callback as WeCom sends it: query parameters plus (for POST) the JSON body."""

    query: dict[str, str]
    body: bytes = b""

    @property
    def query_string(self) -> str:
        """The percent-encoded query string."""
        return urlencode(self.query)


class WeComSigner:
    """Sign and encrypt callbacks with the bot's token and EncodingAESKey, as WeCom does."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.crypto = WeComCrypto(token, encoding_aes_key, receive_id)
        self.clock = clock

    def _nonce(self) -> str:
        return str(int.from_bytes(os.urandom(4), "big"))

    def verify_request(self, echo: str = "1616140317555161061", timestamp: str | None = None) -> SignedRequest:
        """Build the GET URL-verification query whose ``echostr`` decrypts to ``echo``."""
        sealed = self.crypto.encrypt(echo, self._nonce(), timestamp or str(int(self.clock())))
        return SignedRequest({"msg_signature": sealed.signature, "timestamp": sealed.timestamp,
                              "nonce": sealed.nonce, "echostr": sealed.encrypt})

    def callback(self, payload: dict[str, Any] | str, timestamp: str | None = None) -> SignedRequest:
        """Build the POST callback carrying ``payload`` (a dict is JSON-encoded)."""
        plaintext = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        sealed = self.crypto.encrypt(plaintext, self._nonce(), timestamp or str(int(self.clock())))
        query = {"msg_signature": sealed.signature, "timestamp": sealed.timestamp, "nonce": sealed.nonce}
        return SignedRequest(query, json.dumps({"encrypt": sealed.encrypt}).encode())

    def open_reply(self, body: bytes | str, request: SignedRequest) -> dict[str, Any]:
        """Verify and decrypt a reply envelope; it must echo the request's nonce."""
        envelope = json.loads(body)
        if envelope.get("nonce") != request.query["nonce"]:
            raise AssertionError("reply nonce differs from the callback's nonce")
        plaintext = self.crypto.decrypt(envelope["msgsignature"], str(envelope["timestamp"]),
                                        envelope["nonce"], envelope["encrypt"])
        reply: dict[str, Any] = json.loads(plaintext)
        return reply


def text_message(content: str, *, userid: str = "zhangsan", chattype: str = "single",
                 chatid: str | None = None, msgid: str | None = None,
                 response_url: str = "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=x",
                 aibotid: str = "AIBOTID") -> dict[str, Any]:
    """Return the decrypted payload of a text message callback (wecom-protocol.md §1.4)."""
    payload: dict[str, Any] = {
        "msgid": msgid or uuid.uuid4().hex, "aibotid": aibotid, "chattype": chattype,
        "from": {"userid": userid}, "response_url": response_url, "msgtype": "text",
        "text": {"content": content},
    }
    if chatid is not None:
        payload["chatid"] = chatid
    return payload


def event_message(eventtype: str, body: dict[str, Any] | None = None, *, userid: str = "zhangsan",
                  response_url: str = "", msgid: str | None = None) -> dict[str, Any]:
    """Return the decrypted payload of an event callback (wecom-protocol.md §1.7): ``enter_chat``,
    ``feedback_event`` or ``template_card_event`` with its ``body``."""
    event: dict[str, Any] = {"eventtype": eventtype}
    if body is not None:
        event[eventtype] = body
    payload: dict[str, Any] = {"msgid": msgid or uuid.uuid4().hex, "create_time": int(time.time()),
                               "aibotid": "AIBOTID", "chattype": "single", "from": {"userid": userid},
                               "msgtype": "event", "event": event}
    if response_url:
        payload["response_url"] = response_url
    return payload


def stream_refresh(stream_id: str, *, userid: str = "zhangsan", chattype: str = "single",
                   chatid: str | None = None, aibotid: str = "AIBOTID") -> dict[str, Any]:
    """Return the decrypted payload of a stream refresh callback (wecom-protocol.md §1.6)."""
    payload: dict[str, Any] = {
        "msgid": uuid.uuid4().hex, "aibotid": aibotid, "chattype": chattype,
        "from": {"userid": userid}, "msgtype": "stream", "stream": {"id": stream_id},
    }
    if chatid is not None:
        payload["chatid"] = chatid
    return payload


class WeComClient:
    """Send callbacks to running bots over HTTP and poll their streams, as WeCom does."""

    def __init__(self, signer: WeComSigner, session: Any = None, timeout: float = 10.0,
                 path: str = "/wecom/callback") -> None:
        import requests

        self.signer = signer
        self.path = path  # a bot's callback path: /wecom/callback/<bot_id> (the default bot's is shorter)
        self.session = session or requests.Session()
        self.timeout = timeout

    def send(self, base_url: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """POST one encrypted callback to ``base_url``; return the decrypted reply (None if empty)."""
        req = self.signer.callback(payload)
        resp = self.session.post(f"{base_url}{self.path}?{req.query_string}", data=req.body,
                                 headers={"Content-Type": "application/json"}, timeout=self.timeout)
        resp.raise_for_status()
        if not resp.content:
            return None
        return self.signer.open_reply(resp.content, req)

    def poll(self, base_url: str, stream_id: str, **kw: Any) -> dict[str, Any]:
        """Send one stream refresh and return the decrypted stream reply."""
        reply = self.send(base_url, stream_refresh(stream_id, **kw))
        if reply is None:
            raise AssertionError("empty reply to a stream refresh")
        return reply

    def converse(self, base_urls: list[str], payload: dict[str, Any], *, interval: float = 1.0,
                 max_polls: int = 400, on_frame: Callable[[dict[str, Any]], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
        """Send ``payload`` to the first URL, then poll round-robin until ``finish``; return all frames."""
        first = self.send(base_urls[0], payload)
        if first is None:
            return []
        frames = [first]
        if on_frame:
            on_frame(first)
        sid = first["stream"]["id"]
        polls = 0
        while not frames[-1]["stream"]["finish"] and polls < max_polls:
            sleep(interval)
            polls += 1
            frame = self.poll(base_urls[polls % len(base_urls)], sid)
            frames.append(frame)
            if on_frame:
                on_frame(frame)
        return frames

"""The apps served by gunicorn in the benchmark, all with the same gunicorn settings.

- ``ours()``: the bridge itself (``app:create_app()``).
- ``peer()``: the PyPI package ``wecom-new-bot-svr`` (a Flask framework for AI-bot callbacks),
  answering text messages and stream refreshes the way such bots do: from a dict in process memory.
- ``floor()``: a bare Flask endpoint doing only what no implementation can skip (verify + decrypt
  the callback, encrypt a reply of the same size), with no Redis and no application logic.

Byte-identical replies. With ``BENCH_PIN=1`` every app encrypts with the same 16 "random" bytes
and the same reply timestamp (``FIXED_RANDOM``, ``FIXED_TIMESTAMP``), and the peer's reply envelope
is serialised the way ours and the floor's are (compact JSON, timestamp as a string). Since all
three build the same plaintext frame, the same poll then gets byte-for-byte the same HTTP body from
each of them, and the benchmark asserts it. The pins cost the same for every app (one call that
returns a constant instead of ``os.urandom(16)``/``time.time()``); nothing else changes.
"""

from __future__ import annotations

import json
import os
import uuid
from functools import lru_cache
from typing import Any

from flask import Flask, Response, request

from crypto import WeComCrypto

PATH = "/wecom/callback"
FIXED_RANDOM = b"1234567890123456"  # 16 ASCII digits: also in the domain of the peer's own generator
FIXED_TIMESTAMP = 1_767_225_600  # the benchmark's signer signs with this clock too (BENCH_PIN runs)


@lru_cache(maxsize=8)
def filler(size: int) -> str:
    """CJK-heavy text of exactly ``size`` UTF-8 bytes (3-byte characters, padded with ASCII)."""
    unit = "企业微信流式回答"  # 24 bytes
    text = unit * (size // 24)
    return text + "x" * (size - len(text.encode()))


def _pinned() -> bool:
    return os.environ.get("BENCH_PIN") == "1"


def pin_crypto() -> None:
    """Make every ``WeComCrypto`` built from now on use the fixed random bytes and clock."""
    if getattr(WeComCrypto, "_bench_pinned", False):
        return
    original = WeComCrypto.__init__

    def init(self: WeComCrypto, *args: Any, **kwargs: Any) -> None:
        kwargs["random_bytes"] = lambda n: FIXED_RANDOM[:n]
        kwargs["clock"] = lambda: float(FIXED_TIMESTAMP)
        original(self, *args, **kwargs)

    WeComCrypto.__init__ = init  # type: ignore[method-assign]
    WeComCrypto._bench_pinned = True  # type: ignore[attr-defined]


def ours() -> Any:
    """The bridge, exactly as ``gunicorn 'app:create_app()'`` serves it (crypto pinned with BENCH_PIN)."""
    if _pinned():
        pin_crypto()
    from app import create_app

    return create_app()


def peer() -> Any:
    """The peer implementation, wired up like its ``run()`` but served by gunicorn."""
    from wecom_new_bot_svr import RspStreamMsg, StreamReqMsg, WecomNewBotServer
    from wx_crypt import WXBizMsgCrypt3

    # wecom-new-bot-svr 0.1.3 + wx-crypt 0.0.3 cannot encrypt any reply as published: the library
    # guards with `if text is bytes` (always False) and then concatenates the str reply to bytes,
    # so every callback is a 500. The smallest fix that lets the peer answer at all: encode first.
    original = WXBizMsgCrypt3.Prpcrypt.encrypt

    def encrypt(self: Any, text: Any, receiveid: str) -> Any:
        return original(self, text.encode() if isinstance(text, str) else text, receiveid)

    WXBizMsgCrypt3.Prpcrypt.encrypt = encrypt
    if _pinned():
        _pin_peer(WXBizMsgCrypt3)

    server = WecomNewBotServer("peer", "127.0.0.1", 0, PATH, token=os.environ["WECOM_TOKEN"],
                               aes_key=os.environ["WECOM_ENCODING_AES_KEY"])
    content = filler(int(os.environ.get("BENCH_CONTENT_BYTES", "1024")))
    streams: dict[str, str] = {}

    def on_message(msg: Any) -> Any:
        if isinstance(msg, StreamReqMsg):
            return RspStreamMsg(msg.stream_id, streams.get(msg.stream_id, content), finish=False)
        sid = uuid.uuid4().hex
        streams[sid] = ""
        return RspStreamMsg(sid, "", finish=False)

    server.set_message_handler(on_message)
    server.set_event_handler(lambda msg: None)
    server._app.get(PATH)(server._handle_get)
    server._app.post(PATH)(server._handle_post)
    server._app.get("/livez")(lambda: "ok")  # only for the benchmark's start-up wait
    return server._app


def _pin_peer(lib: Any) -> None:
    """Fixed random bytes and timestamp, and ours' envelope serialisation (see the module docstring)."""
    lib.Prpcrypt.get_random_str = lambda self: FIXED_RANDOM
    encrypt_msg = lib.WXBizMsgCrypt.EncryptMsg

    def pinned_encrypt_msg(self: Any, reply: Any, nonce: Any, timestamp: Any = None) -> Any:
        return encrypt_msg(self, reply, nonce, str(FIXED_TIMESTAMP))

    def generate(self: Any, encrypt: Any, signature: Any, timestamp: Any, nonce: Any) -> str:
        envelope = {"encrypt": encrypt, "msgsignature": signature, "timestamp": str(timestamp), "nonce": nonce}
        return json.dumps(envelope, separators=(",", ":"))

    lib.WXBizMsgCrypt.EncryptMsg = pinned_encrypt_msg
    lib.JSONParse.generate = generate


def floor() -> Flask:
    """Verify + decrypt, then encrypt a stream frame of ``BENCH_CONTENT_BYTES``: nothing else.

    The frame is unfinished, or finished with ``BENCH_FINISH=1`` (like ours polling a finished stream).
    """
    app = Flask("floor")
    if _pinned():
        pin_crypto()
    crypto = WeComCrypto(os.environ["WECOM_TOKEN"], os.environ["WECOM_ENCODING_AES_KEY"], "")
    content = filler(int(os.environ.get("BENCH_CONTENT_BYTES", "1024")))
    finish = os.environ.get("BENCH_FINISH") == "1"

    app.get("/livez")(lambda: "ok")

    @app.post(PATH)
    def callback() -> Response:
        q = request.args
        msg = json.loads(crypto.decrypt_json(q["msg_signature"], q["timestamp"], q["nonce"], request.get_data()))
        sid = msg.get("stream", {}).get("id") or uuid.uuid4().hex
        frame = {"msgtype": "stream", "stream": {"id": sid, "finish": finish, "content": content}}
        return Response(crypto.encrypt_json(json.dumps(frame, ensure_ascii=False), q["nonce"]),
                        mimetype="application/json")

    return app

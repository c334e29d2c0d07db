"""The comparison apps served by gunicorn in the benchmark, with the same settings as ours.

- ``peer()``: the PyPI package ``wecom-new-bot-svr`` (a Flask framework for AI-bot callbacks),
  answering text messages and stream refreshes the way such bots do: from a dict in process memory.
- ``floor()``: a bare Flask endpoint doing only what no implementation can skip (verify + decrypt
  the callback, encrypt a reply of the same size), with no Redis and no application logic.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from flask import Flask, Response, request

from crypto import WeComCrypto

PATH = "/wecom/callback"


def filler(size: int) -> str:
    """CJK-heavy text of exactly ``size`` UTF-8 bytes (3-byte characters, padded with ASCII)."""
    unit = "企业微信流式回答"  # 24 bytes
    text = unit * (size // 24)
    return text + "x" * (size - len(text.encode()))


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


def floor() -> Flask:
    """Verify + decrypt, then encrypt a stream frame of ``BENCH_CONTENT_BYTES``: nothing else."""
    app = Flask("floor")
    crypto = WeComCrypto(os.environ["WECOM_TOKEN"], os.environ["WECOM_ENCODING_AES_KEY"], "")
    content = filler(int(os.environ.get("BENCH_CONTENT_BYTES", "1024")))

    app.get("/livez")(lambda: "ok")

    @app.post(PATH)
    def callback() -> Response:
        q = request.args
        msg = json.loads(crypto.decrypt_json(q["msg_signature"], q["timestamp"], q["nonce"], request.get_data()))
        sid = msg.get("stream", {}).get("id") or uuid.uuid4().hex
        frame = {"msgtype": "stream", "stream": {"id": sid, "finish": False, "content": content}}
        return Response(crypto.encrypt_json(json.dumps(frame, ensure_ascii=False), q["nonce"]),
                        mimetype="application/json")

    return app

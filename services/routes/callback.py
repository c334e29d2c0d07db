"""The WeCom callback endpoint: URL verification (GET) and encrypted messages (POST)."""

from __future__ import annotations

import json
import logging
import time

from flask import Blueprint, Response, abort, request

from crypto import SignatureError, WeComCryptoError
from services import metrics
from services.bridge import get_bridge

bp = Blueprint("callback", __name__)
log = logging.getLogger(__name__)

QUERY_FIELDS = ("msg_signature", "timestamp", "nonce")
KNOWN_TYPES = frozenset({"text", "stream", "image", "mixed", "voice", "file", "video", "event"})


def query_params(*extra: str) -> list[str]:
    """Return the signed query parameters (Flask decodes them once), or abort with 400."""
    values = []
    for name in (*QUERY_FIELDS, *extra):
        value = request.args.get(name)
        if not value:
            abort(400, description=f"missing query parameter {name}")
        values.append(value)
    return values


def reject(exc: WeComCryptoError, msgtype: str = "verify") -> Response:
    """Turn a crypto failure into 403 (signature) or 400 (anything after it); never a 5xx."""
    status = 403 if isinstance(exc, SignatureError) else 400
    metrics.CALLBACKS.labels(msgtype, "rejected_signature" if status == 403 else "rejected_crypto").inc()
    log.warning("callback rejected", extra={"errcode": exc.code, "status": status})
    return Response(f"rejected: {exc.code}\n", status=status, mimetype="text/plain")


@bp.get("/wecom/callback")
def verify_url() -> Response:
    """Answer WeCom's URL verification with the bare decrypted ``echostr``."""
    signature, timestamp, nonce, echostr = query_params("echostr")
    try:
        plaintext = get_bridge().crypto.verify_url(signature, timestamp, nonce, echostr)
    except WeComCryptoError as exc:
        return reject(exc)
    metrics.CALLBACKS.labels("verify", "ok").inc()
    log.info("url verified")
    return Response(plaintext, mimetype="text/plain")


@bp.post("/wecom/callback")
def receive() -> Response:
    """Verify and decrypt an AI-bot callback, handle it, and answer with an encrypted reply."""
    started = time.perf_counter()
    signature, timestamp, nonce = query_params()
    bridge = get_bridge()
    try:
        plaintext = bridge.crypto.decrypt_json(signature, timestamp, nonce, request.get_data())
    except WeComCryptoError as exc:
        return reject(exc, "unknown")
    try:
        msg = json.loads(plaintext)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        msg = None
    if not isinstance(msg, dict):
        metrics.CALLBACKS.labels("unknown", "bad_plaintext").inc()
        log.warning("callback plaintext is not a JSON object")
        return Response("rejected: plaintext is not a JSON object\n", status=400, mimetype="text/plain")
    reply, outcome = bridge.handler.handle(msg)
    raw_type = msg.get("msgtype")
    msgtype = raw_type if isinstance(raw_type, str) and raw_type in KNOWN_TYPES else "other"
    if reply is None:
        response = Response(b"", status=200)
    else:
        body = bridge.crypto.encrypt_json(json.dumps(reply, ensure_ascii=False), nonce)
        response = Response(body, mimetype="application/json")
    metrics.CALLBACKS.labels(msgtype, outcome).inc()
    metrics.CALLBACK_SECONDS.labels(msgtype).observe(time.perf_counter() - started)
    return response

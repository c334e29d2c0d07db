"""The WeCom callback endpoints: URL verification (GET) and encrypted messages (POST), one URL per bot.

``/wecom/callback/<bot_id>`` serves each configured bot; ``/wecom/callback`` serves the bot ``default``.
An unknown bot is a 404 before anything is decrypted, and each bot checks signatures with its own
token, so a callback signed for one bot and sent to another's URL is a 403.
"""

from __future__ import annotations

import json
import logging
import time

from flask import Blueprint, Response, abort, g, request

from config import DEFAULT_BOT
from crypto import SignatureError, WeComCrypto, WeComCryptoError
from services import metrics
from services.bot import Bot
from services.bridge import get_bridge
from services.messages import MessageHandler
from utils.logging import BOT

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


def find_bot(bot_id: str) -> tuple[Bot, WeComCrypto, MessageHandler]:
    """The configured callback bot ``bot_id``, its crypto and handler, or abort with 404 (nothing is decrypted).

    A long-connection bot takes no callbacks: it is not found here either.
    """
    bridge = get_bridge()
    bot, handler = bridge.bots.get(bot_id), bridge.handlers.get(bot_id)
    if bot is None or handler is None or bot.crypto is None:
        metrics.UNKNOWN_BOT.inc()
        abort(404, description="no such bot")
    return bot, bot.crypto, handler


@bp.before_request
def name_the_bot() -> None:
    """Every log line of this request, its error traceback included, names its (configured) bot."""
    bot_id = (request.view_args or {}).get("bot_id", DEFAULT_BOT)
    if bot_id in get_bridge().bots:
        g.bot_log = BOT.set(bot_id)


@bp.teardown_request
def forget_the_bot(exc: BaseException | None) -> None:
    """The thread serves other bots next."""
    token = g.pop("bot_log", None)
    if token is not None:
        BOT.reset(token)


def reject(bot: Bot, exc: WeComCryptoError, msgtype: str = "verify") -> Response:
    """Turn a crypto failure into 403 (signature) or 400 (anything after it); never a 5xx."""
    status = 403 if isinstance(exc, SignatureError) else 400
    metrics.CALLBACKS.labels(bot.id, msgtype, "rejected_signature" if status == 403 else "rejected_crypto").inc()
    log.warning("callback rejected", extra={"errcode": exc.code, "status": status})
    return Response(f"rejected: {exc.code}\n", status=status, mimetype="text/plain")


@bp.get("/wecom/callback/<bot_id>")
def verify_url(bot_id: str) -> Response:
    """Answer WeCom's URL verification with the bare decrypted ``echostr``."""
    bot, crypto, _ = find_bot(bot_id)
    signature, timestamp, nonce, echostr = query_params("echostr")
    try:
        plaintext = crypto.verify_url(signature, timestamp, nonce, echostr)
    except WeComCryptoError as exc:
        return reject(bot, exc)
    metrics.CALLBACKS.labels(bot.id, "verify", "ok").inc()
    log.info("url verified")
    return Response(plaintext, mimetype="text/plain")


@bp.post("/wecom/callback/<bot_id>")
def receive(bot_id: str) -> Response:
    """Verify and decrypt an AI-bot callback, handle it, and answer with an encrypted reply."""
    bot, crypto, handler = find_bot(bot_id)
    return _receive(bot, crypto, handler)


# The bot ``default`` also answers at the short URL (separate views: a rule with defaults would
# make Flask redirect /wecom/callback/default there, and WeCom does not follow redirects).
@bp.get("/wecom/callback")
def verify_default_url() -> Response:
    """URL verification of the bot ``default``."""
    return verify_url(DEFAULT_BOT)


@bp.post("/wecom/callback")
def receive_default() -> Response:
    """A callback for the bot ``default``."""
    return receive(DEFAULT_BOT)


def _receive(bot: Bot, crypto: WeComCrypto, handler: MessageHandler) -> Response:
    started = time.perf_counter()
    signature, timestamp, nonce = query_params()
    try:
        plaintext = crypto.decrypt_json(signature, timestamp, nonce, request.get_data())
    except WeComCryptoError as exc:
        return reject(bot, exc, "unknown")
    try:
        msg = json.loads(plaintext)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        msg = None
    if not isinstance(msg, dict):
        metrics.CALLBACKS.labels(bot.id, "unknown", "bad_plaintext").inc()
        log.warning("callback plaintext is not a JSON object")
        return Response("rejected: plaintext is not a JSON object\n", status=400, mimetype="text/plain")
    reply, outcome = handler.handle(msg)
    raw_type = msg.get("msgtype")
    msgtype = raw_type if isinstance(raw_type, str) and raw_type in KNOWN_TYPES else "other"
    if reply is None:
        response = Response(b"", status=200)
    else:
        body = crypto.encrypt_json(json.dumps(reply, ensure_ascii=False), nonce)
        response = Response(body, mimetype="application/json")
    metrics.CALLBACKS.labels(bot.id, msgtype, outcome).inc()
    metrics.CALLBACK_SECONDS.labels(msgtype).observe(time.perf_counter() - started)
    return response

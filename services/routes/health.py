"""Probes: ``/livez`` checks only the process, ``/readyz`` checks the backends."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from services.bridge import get_bridge
from services.errors import AuthUnavailable, StoreUnavailable
from services.streams.connection import REDIS_ERRORS

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez() -> Response:
    """Answer 200 while the process can serve requests; touches no backend."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Answer 200 only when Redis (and MySQL, with ``AUTH_MODE=mysql``) answer.

    ``dify`` shows, per bot, how its latest Dify answer in this worker went. It is informational
    (an outage of a shared Dify must not take every replica out of service) and costs no request.
    """
    bridge = get_bridge()
    checks: dict[str, str] = {}
    if bridge.engine.draining:
        checks["shutdown"] = "draining"
    try:
        bridge.redis.ping()
        checks["redis"] = "ok"
    except REDIS_ERRORS as exc:  # on a cluster: the node the client asks first
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    if bridge.users is not None:
        try:
            bridge.users.ping()
            checks["mysql"] = "ok"
        except AuthUnavailable as exc:
            checks["mysql"] = f"unavailable: {exc}"
    for bot_id, bot in bridge.bots.items():
        if bot.settings.wecom_transport == "websocket" and checks.get("redis") == "ok":
            try:
                refused = bot.store.get_value(bot.store.keys.ws_refused(bot.settings.wecom_bot_id))
            except StoreUnavailable:
                refused = None  # the Redis check above speaks for it
            checks[f"long_connection:{bot_id}"] = "refused: check its BotID and Secret" if refused else "ok"
    ready = all(v == "ok" for v in checks.values())
    dify = {bot_id: bot.health.describe() for bot_id, bot in bridge.bots.items()}
    return jsonify(status="ok" if ready else "unavailable", checks=checks, dify=dify), (200 if ready else 503)

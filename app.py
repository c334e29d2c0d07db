"""Application factory: ``gunicorn 'app:create_app()'``. Nothing connects or starts at import."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from config import BotConfig, Settings, load_bots, load_settings
from services.bridge import Bridge
from services.routes import callback, health, metrics
from utils.logging import configure_logging


def create_app(config: Settings | None = None, bots: Mapping[str, BotConfig] | None = None) -> Flask:
    """Build the Flask app from ``config`` (default: the environment and ``.env``) and its bots
    (default: those of ``BOTS_FILE``, or the environment's single bot)."""
    settings = config if config is not None else load_settings()
    bots = bots if bots is not None else load_bots(settings)
    # a token is a stable per-deployment secret: hashed user ids are stable but not reversible (with
    # a bots file and no global WECOM_TOKEN, the alphabetically first bot's)
    first = bots[min(bots)].settings
    salt = settings.wecom_token or first.wecom_token or first.wecom_ws_secret  # (a long-connection bot has no token)
    configure_logging(settings.log_level, settings.log_user_ids, salt=salt)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    Bridge.build(settings, bots).init_app(app)
    app.register_blueprint(callback.bp)
    app.register_blueprint(health.bp)
    if not settings.metrics_port:  # else the gunicorn master serves /metrics on METRICS_PORT, private
        app.register_blueprint(metrics.bp)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _http_error(exc: HTTPException) -> Response:
    """Render HTTP errors as short plain text (no HTML, no stack traces)."""
    return Response(f"{exc.code} {exc.name}: {exc.description}\n", status=exc.code or 500,
                    mimetype="text/plain")

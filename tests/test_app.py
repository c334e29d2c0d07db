"""App factory, probes, body limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis
from flask.testing import FlaskClient

from app import create_app
from config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_import_connects_nothing_and_starts_no_thread() -> None:
    code = (
        "import threading, socket\n"
        "made = []\n"
        "orig = socket.socket.connect\n"
        "socket.socket.connect = lambda self, *a: made.append(a) or orig(self, *a)\n"
        "import app\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert not made, made\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_livez_touches_no_backend(settings: Settings) -> None:
    dead = settings.replace(redis_url="redis://127.0.0.1:1/0")
    client = create_app(dead).test_client()
    assert client.get("/livez").status_code == 200


def test_readyz_checks_redis(settings: Settings, redis_client: redis.Redis) -> None:
    assert create_app(settings).test_client().get("/readyz").status_code == 200
    dead = settings.replace(redis_url="redis://127.0.0.1:1/0")
    resp = create_app(dead).test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["redis"].startswith("unavailable")


def test_body_over_limit_is_413(client: FlaskClient, settings: Settings) -> None:
    body = b"{" + b" " * settings.max_request_bytes + b"}"
    resp = client.post("/wecom/callback?msg_signature=a&timestamp=1&nonce=2", data=body,
                       content_type="application/json")
    assert resp.status_code == 413

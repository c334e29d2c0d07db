"""gunicorn settings for the bridge: ``gunicorn 'app:create_app()'`` picks this file up from the cwd.

Why these values:
- gthread workers: requests are short (callbacks, polls); the long work (Dify streams) runs in the
  app's own producer threads, which this server never sees.
- ``max_requests = 0``: never recycle a worker. A recycled worker takes the producer threads of
  its live streams with it (gunicorn only waits for in-flight HTTP requests, not app threads), and
  those users would see "interrupted". Memory is bounded by the producer pool instead.
- ``graceful_timeout = SHUTDOWN_DRAIN_SECONDS + 5``: after SIGTERM the worker stops accepting,
  finishes in-flight requests, then ``worker_exit`` drains the producers for at most the drain
  budget and marks what is left interrupted. The master SIGKILLs only after that.
"""

from __future__ import annotations

import os
import signal
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
keepalive = 5
max_requests = 0
drain_seconds = float(os.environ.get("SHUTDOWN_DRAIN_SECONDS", "20"))
graceful_timeout = int(drain_seconds) + 5
accesslog = None  # one JSON line per event comes from the app; request lines add nothing but volume


def _bridge(worker: Any) -> Any:
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {})
    return extensions.get("wecom_dify")


def post_worker_init(worker: Any) -> None:
    """On SIGTERM, fail /readyz and refuse new work at once, then let gunicorn stop as usual."""
    bridge = _bridge(worker)
    if bridge is None:
        return
    original = worker.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        bridge.producer.begin_shutdown()
        original(sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)


def worker_exit(server: Any, worker: Any) -> None:
    """Let running answers finish within the drain budget; mark the rest interrupted."""
    bridge = _bridge(worker)
    if bridge is not None:
        bridge.producer.drain(drain_seconds)

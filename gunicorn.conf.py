"""gunicorn settings for the bridge: ``gunicorn 'app:create_app()'`` picks this file up from the cwd.

Why these values:
- gthread workers: requests are short (callbacks, polls); the long work (Dify streams) runs on the
  app's own answer engine (one event loop thread per worker), which this server never sees.
- ``max_requests = 0``: never recycle a worker. A recycled worker takes its engine's live streams
  with it (gunicorn only waits for in-flight HTTP requests, not app threads), and those users
  would see "interrupted". Memory is bounded by ``ENGINE_CAPACITY`` instead.
- ``graceful_timeout = SHUTDOWN_DRAIN_SECONDS + 15``: after SIGTERM the worker stops accepting,
  finishes in-flight requests, then ``worker_exit`` drains the engine for at most the drain
  budget, marks what is left interrupted and lets it settle. The master SIGKILLs only after that.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from typing import Any

from gunicorn.glogging import Logger

from config import ConfigError, load_bots, load_settings

# Metrics from every worker are aggregated through files in this directory (prometheus-client's
# multiprocess mode). It must be set before a worker imports the app, and start empty.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wecom-dify-metrics-")

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
keepalive = 5
max_requests = 0
# The drain budget comes from the app's own validated settings (environment, then .env), so a bad
# value (or bots file) stops the master at once with an error naming it, and the workers drain with
# the same number the master waits for.
try:
    _settings = load_settings()
    load_bots(_settings)  # a bad bots file stops the master too, naming the bot and the field
except ConfigError as _error:  # one line naming the variable, not gunicorn's traceback
    raise SystemExit(f"configuration error: {_error}") from None
drain_seconds = _settings.shutdown_drain_seconds
# the engine's drain: the budget, then up to 10 s for the interrupted answers to settle and follow
# up (SETTLE_AFTER_DRAIN), then up to 4 s for its loop thread (LOOP_JOIN); 1 s to spare
graceful_timeout = int(drain_seconds) + 15
control_socket_disable = True  # unused; the default path is per-user, shared by every master on a host
accesslog = None  # one JSON line per event comes from the app; request lines add nothing but volume


class QuietAccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, except that it builds no access-log line that its level would drop.

    A ``logconfig_dict`` makes gunicorn format every request's access atoms even though
    ``gunicorn.access`` is silenced below: about 5 % of a poll's CPU for nothing.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


logger_class = QuietAccessLogger
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "utils.logging.JsonFormatter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "root": {"level": "INFO", "handlers": []},  # the app adds its own JSON handler to the root logger
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
                # a logconfig_dict turns gunicorn's access log on; keep it off (see accesslog)
                "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False}},
}


def on_starting(server: Any) -> None:
    """Start with an empty metrics directory (stale files from a previous run would be summed)."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        target = os.path.join(path, name)
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)


def when_ready(server: Any) -> None:
    """With METRICS_PORT, serve /metrics (every worker's samples) from the master on that port, at the
    address of gunicorn's own first listener; the app's /metrics is then a 404."""
    port = _settings.metrics_port
    if not port:
        return
    from services import metrics_server

    address = server.cfg.address[0]
    host = address[0] if isinstance(address, tuple) else "127.0.0.1"  # a unix socket: stay local
    try:
        server.metrics_httpd = metrics_server.start(host, port)
    except OSError as error:  # one line, as for a bad value (before any worker starts)
        raise SystemExit(f"configuration error: METRICS_PORT: cannot listen on {host}:{port} "
                         f"({error.strerror or error})") from None
    server.log.info("metrics at http://%s:%d/metrics", host, port)


def post_fork(server: Any, worker: Any) -> None:
    """A worker does not keep the master's metrics listener open (only the master serves it)."""
    httpd = getattr(server, "metrics_httpd", None)
    if httpd is not None:
        httpd.socket.close()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the aggregate."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _bridge(worker: Any) -> Any:
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {})
    return extensions.get("wecom_dify")


def post_worker_init(worker: Any) -> None:
    """Start the answer engine; on SIGTERM, fail /readyz and refuse new work at once, then stop as usual."""
    bridge = _bridge(worker)
    if bridge is None:
        return
    bridge.engine.start()
    original = worker.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        bridge.engine.begin_shutdown()
        original(sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)


def worker_exit(server: Any, worker: Any) -> None:
    """Let running answers finish within the drain budget; mark the rest interrupted."""
    bridge = _bridge(worker)
    if bridge is not None:
        bridge.engine.drain(bridge.settings.shutdown_drain_seconds)

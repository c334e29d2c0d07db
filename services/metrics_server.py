"""``METRICS_PORT``: ``/metrics`` on a port of its own, served by the gunicorn master.

gunicorn.conf.py's ``when_ready`` starts it in the master (one listener per pod, whatever the number
of workers); it aggregates every worker's files under ``PROMETHEUS_MULTIPROC_DIR``, as ``/metrics``
on the app's port does without ``METRICS_PORT``. This module defines no metric, so importing it in
the master writes nothing there.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, multiprocess, start_http_server


def multiprocess_registry() -> CollectorRegistry:
    """A registry reading every process's samples from ``PROMETHEUS_MULTIPROC_DIR``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def start(host: str, port: int) -> WSGIServer:
    """Serve the aggregated metrics on ``host:port`` from a daemon thread; raise ``OSError`` if it cannot listen."""
    server, _thread = start_http_server(port, addr=host, registry=multiprocess_registry())
    return server

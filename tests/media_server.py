"""A stand-in for WeCom's media storage: serves AES-encrypted files that expire, and misbehaves on request."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from crypto import encrypt_media
from tests.servers import free_port


class MediaServer:
    """``/m/<name>`` serves a file added with ``add`` (encrypted with ``aes_key``) until it expires;
    ``/forbidden`` is a 403, ``/error`` a 500, ``/redirect`` a 302, ``/slow`` trickles, ``/endless``
    streams without end and ``/declared`` announces a huge Content-Length; ``sent`` counts their bytes."""

    def __init__(self, aes_key: str) -> None:
        self.aes_key = aes_key
        self.port = free_port()
        self.files: dict[str, tuple[bytes, float]] = {}
        self.requests: list[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with outer._lock:
                    outer.requests.append(self.path)
                try:
                    outer._serve(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client cut the download off

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, name: str, data: bytes, *, ttl: float = 300.0, raw: bool = False) -> str:
        """Serve ``data`` (encrypted unless ``raw``) at a URL valid for ``ttl`` seconds; return the URL."""
        self.files[name] = (data if raw else encrypt_media(self.aes_key, data), time.time() + ttl)
        return self.url(f"/m/{name}")

    def url(self, path: str) -> str:
        """An http URL of this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        if h.path.startswith("/m/"):
            body, expires = self.files.get(h.path[3:], (b"", 0.0))
            if time.time() > expires:
                return self._status(h, 403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message>")
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        elif h.path in ("/forbidden", "/error"):
            self._status(h, 403 if h.path == "/forbidden" else 500, b"no")
        elif h.path == "/redirect":
            h.send_response(302)
            h.send_header("Location", self.url("/m/elsewhere"))
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif h.path in ("/endless", "/declared", "/slow"):
            h.send_response(200)
            if h.path == "/declared":
                h.send_header("Content-Length", str(10**9))
            h.end_headers()
            chunk = b"\x00" * (16 if h.path == "/slow" else 65536)
            for _ in range(100000):
                h.wfile.write(chunk)
                h.wfile.flush()
                with self._lock:
                    self.sent += len(chunk)
                if h.path == "/slow":
                    time.sleep(0.2)

    @staticmethod
    def _status(h: BaseHTTPRequestHandler, code: int, body: bytes) -> None:
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()

"""Serve files to a bot as WeCom serves a message's media: AES-encrypted with the bot's key, on loopback."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from crypto import encrypt_media


class MediaHost:
    """A loopback HTTP server; ``add(data)`` returns the URL of ``data`` encrypted with ``aes_key``."""

    def __init__(self, aes_key: str | bytes, port: int = 0) -> None:
        self.aes_key = aes_key
        self.files: dict[str, bytes] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = outer.files.get(self.path.rsplit("/", 1)[-1])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, data: bytes) -> str:
        """Serve ``data`` (encrypted) and return its URL."""
        name = uuid.uuid4().hex
        self.files[name] = encrypt_media(self.aes_key, data)
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/media/{name}"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

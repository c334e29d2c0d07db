"""A local stand-in for WeCom's ``response_url`` endpoint: records every POST, answers errcode 0."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.servers import free_port


class ResponseServer:
    """Records the JSON bodies POSTed to ``/cgi-bin/aibot/response``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.received.append(json.loads(body))
                    outer.content_types.append(self.headers.get("Content-Type", ""))
                data = b'{"errcode":0,"errmsg":"ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, code: str = "x") -> str:
        """A response_url pointing here."""
        return f"http://127.0.0.1:{self.port}/cgi-bin/aibot/response?response_code={code}"

    def contents(self) -> list[str]:
        """The markdown contents received so far."""
        with self._lock:
            return [r["markdown"]["content"] for r in self.received]

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()

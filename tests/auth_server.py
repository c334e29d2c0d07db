"""A real HTTP server speaking the authentication API contract (see services/auth_api.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.servers import free_port


class AuthServer:
    """Issues tokens ``tok-<account>-<n>`` to callers presenting the service secret."""

    def __init__(self, secret: str = "svc-secret", *, expires_in: int | None = 3600, delay: float = 0.0) -> None:
        self.secret = secret
        self.expires_in = expires_in
        self.delay = delay
        self.refused: set[str] = set()
        self.user_info: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.port = free_port()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The endpoint URL."""
        return f"http://127.0.0.1:{self.port}/api/wecom-token"

    def start(self) -> AuthServer:
        """Serve on the same port (again)."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.headers.get("Authorization") != f"Bearer {outer.secret}":
                    return self._send(401, {"error": "bad service secret"})
                time.sleep(outer.delay)
                with outer._lock:
                    outer.calls.append(body)
                    n = len(outer.calls)
                if body.get("account") in outer.refused:
                    return self._send(403, {"error": "account disabled"})
                answer: dict[str, Any] = {"token": f"tok-{body.get('account')}-{n}",
                                          "user": dict(outer.user_info)}
                if outer.expires_in is not None:
                    answer["expires_in"] = outer.expires_in
                return self._send(200, answer)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.allow_reuse_address = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="auth-server").start()
        return self

    def stop(self) -> None:
        """Stop serving (connections are then refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

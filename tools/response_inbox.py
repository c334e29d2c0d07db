"""A loopback stand-in for WeCom's ``response_url`` (wecom-protocol.md §3): it keeps what the bot sends.

Used by ``python -m tools.wecom_sim`` to show answers that come as active replies (a card click's).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ResponseInbox:
    """Receives ``POST /cgi-bin/aibot/response`` on 127.0.0.1 and answers ``{"errcode":0}``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    inbox.received.append(json.loads(body))
                except ValueError:
                    pass
                inbox.arrived.set()
                reply = b'{"errcode":0,"errmsg":"ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self) -> str:
        """A response_url pointing here."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/cgi-bin/aibot/response?response_code=sim"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

"""Real HTTP receivers for the business hooks: a webhook receiver (n8n's role) and a moderation service.

The receiver verifies every delivery's signature as the README tells receivers to; it can answer
500 a number of times, or hang. The moderation service speaks Dify's moderation API-extension
contract (services/moderation/remote.py) and flags texts containing any of its words.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.webhooks.signature import SIGNATURE, TIMESTAMP, verify
from tests.servers import free_port


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver got: its event, whether its signature verified, and what it answered."""

    event: dict[str, Any]
    verified: bool
    status: int
    headers: dict[str, str]


class LocalServer:
    """A threaded HTTP server on a free loopback port, serving ``handler``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()


class WebhookReceiver(LocalServer):
    """Takes webhook deliveries at ``url``; ``fail`` answers the next N with 500, ``hang`` stalls each one."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self.fail = 0
        self.hang = 0.0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = verify(outer.secret, self.headers.get(TIMESTAMP, ""), body, self.headers.get(SIGNATURE, ""))
                if outer.hang:
                    time.sleep(outer.hang)
                with outer._lock:
                    status = 500 if outer.fail > 0 else 200
                    outer.fail = max(0, outer.fail - 1)
                    outer.deliveries.append(Delivery(json.loads(body), ok, status, dict(self.headers)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler)

    @property
    def url(self) -> str:
        """Where to POST events."""
        return f"http://127.0.0.1:{self.port}/webhook/wecom"

    def events(self, kind: str | None = None, *, taken: bool = True) -> list[dict[str, Any]]:
        """The events received (only those answered 2xx with ``taken``), of one type or all."""
        with self._lock:
            return [d.event for d in self.deliveries
                    if (kind is None or d.event.get("type") == kind) and (not taken or d.status == 200)]


class ModerationServer(LocalServer):
    """Flags a question or answer part containing one of ``words``; ``mode`` is what it answers then."""

    def __init__(self, words: list[str], *, mode: str = "direct_output", preset: str = "") -> None:
        self.words, self.mode, self.preset = words, mode, preset
        self.requests: list[dict[str, Any]] = []
        self.down = False
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer._lock:
                    outer.requests.append({"body": body, "auth": self.headers.get("Authorization", "")})
                if outer.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                reply = outer.decide(body)
                data = json.dumps(reply, ensure_ascii=False).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)

    @property
    def url(self) -> str:
        """The API extension's endpoint."""
        return f"http://127.0.0.1:{self.port}/moderation"

    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        """Dify's contract: flagged, and a preset response or the overridden text."""
        params = body.get("params", {})
        field = "query" if body.get("point") == "app.moderation.input" else "text"
        text = str(params.get(field) or "")
        hits = [w for w in self.words if w in text]
        if not hits:
            return {"flagged": False, "action": "direct_output", "preset_response": ""}
        if self.mode == "overridden":
            for word in hits:
                text = text.replace(word, "□" * len(word))
            return {"flagged": True, "action": "overridden", field: text}
        return {"flagged": True, "action": "direct_output", "preset_response": self.preset}

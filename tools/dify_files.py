"""Files a simulated Dify tool made: announced in answers as Dify does, served at signed URLs.

Dify names a tool's file by a URL relative to its own origin (unless ``FILES_URL`` is set):
``/files/tools/<id>.<ext>?timestamp=…&nonce=…&sign=…``, where ``sign`` is the urlsafe base64 of an
HMAC-SHA256 over ``file-preview|<id>|<timestamp>|<nonce>`` and a URL is good for
``FILES_ACCESS_TIMEOUT`` (300 s). A Chatflow's ``message_end.files`` carries ``File.to_dict()``
records; Chatbot and Agent apps announce each file in a ``message_file`` frame (dify-api.md §3.3).
Nothing here is used in production.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

ACCESS_TIMEOUT = 300


@dataclass(frozen=True)
class ToolFile:
    """A file an answer carries: served by the simulator, unless ``url`` names where it is instead."""

    data: bytes = b""
    type: str = "image"
    name: str = "image.png"
    mime: str = "image/png"
    url: str = ""  # announce this URL (absolute or relative) instead of a signed one of the simulator


class ToolFiles:
    """The simulator's tool files: signed URLs out, the bytes back for a valid signature."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._files: dict[str, ToolFile] = {}
        self.fetches: list[str] = []  # paths of the GETs received (valid or not)
        self.refuse = False  # answer every fetch 403, as an expired or tampered signature is

    def publish(self, f: ToolFile) -> dict[str, Any]:
        """Store ``f`` and return its record as Dify's ``File.to_dict()`` (with ``url``)."""
        file_id = str(uuid.uuid4())
        extension = f.name.rsplit(".", 1)[-1] if "." in f.name else "bin"
        with self._lock:
            self._files[file_id] = f
        url = f.url or self._signed(file_id, extension)
        return {"dify_model_identity": "__dify__file__", "id": None, "tenant_id": str(uuid.uuid4()),
                "type": f.type, "transfer_method": "tool_file", "remote_url": None, "related_id": file_id,
                "filename": f.name, "extension": f".{extension}", "mime_type": f.mime, "size": len(f.data),
                "url": url}

    def serve(self, target: str) -> tuple[int, bytes, str]:
        """Answer ``GET target`` (path and query): (status, body, content type)."""
        parts = urlsplit(target)
        with self._lock:
            self.fetches.append(parts.path)
        name = parts.path.removeprefix("/files/tools/")
        file_id = name.split(".", 1)[0]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            f = self._files.get(file_id)
        if f is None:
            return 404, b'{"code":"not_found","message":"file not found","status":404}', "application/json"
        timestamp, nonce, sign = query.get("timestamp", ""), query.get("nonce", ""), query.get("sign", "")
        fresh = timestamp.isdigit() and time.time() - int(timestamp) <= ACCESS_TIMEOUT
        if self.refuse or not fresh or not hmac.compare_digest(sign, self._sign(file_id, timestamp, nonce)):
            return 403, b'{"code":"forbidden","message":"Invalid request.","status":403}', "application/json"
        return 200, f.data, f.mime

    def _signed(self, file_id: str, extension: str) -> str:
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        sign = self._sign(file_id, timestamp, nonce)
        return f"/files/tools/{file_id}.{extension}?timestamp={timestamp}&nonce={nonce}&sign={sign}"

    def _sign(self, file_id: str, timestamp: str, nonce: str) -> str:
        digest = hmac.new(self._secret, f"file-preview|{file_id}|{timestamp}|{nonce}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode()


def demo_png(width: int = 96, height: int = 64) -> bytes:
    """A small gradient PNG (pure zlib), for answers that "draw" something."""
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 160))
                    for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")

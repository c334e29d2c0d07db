"""Incremental Server-Sent Events parser that works on bytes.

Dify (>= 1.8.1) writes raw UTF-8, so a character can be split across network reads: bytes are
buffered, split into lines on ``b"\\n"`` (a CR before it is dropped, so CRLF works too) and each
complete frame is decoded at once.  ``str.splitlines`` is never used, because it breaks at the raw
U+2028/U+2029/U+0085 that orjson leaves inside JSON strings.

    SSEError
    ├── SSEFrameTooLarge        one frame grew past ``max_frame_bytes``
    ├── SSEDecodeError          a complete frame is not valid UTF-8
    └── SSEIncompleteError      ``close()`` found a partial frame (EOF mid-frame)

``services.dify.events`` then maps the JSON of each data frame to the typed events the client yields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
_SKIPPABLE = re.compile(rb'data: ?\{"event": ?"(node_started|node_finished|node_retry|iteration_[a-z]+|loop_[a-z]+|'
                        rb'agent_log|agent_thought|workflow_started|human_input_form_filled)"')
"""Frames that only report progress: one past the size bound is dropped (Dify does not truncate node frames on
the service API, dify-api.md §7.7); any other oversized frame ends the stream."""
_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """Root of the SSE parser errors."""


class SSEFrameTooLarge(SSEError):
    """A single frame exceeded the configured size limit."""


class SSEDecodeError(SSEError):
    """A complete frame was not valid UTF-8."""


class SSEIncompleteError(SSEError):
    """The stream ended in the middle of a frame."""


@dataclass(frozen=True)
class SSEFrame:
    """One dispatched frame: ``event`` is None without an ``event:`` line, ``data`` None without ``data:``."""

    event: str | None
    data: str | None


class SSEParser:
    """Turn a byte stream into ``SSEFrame`` objects; feed it whatever the socket returned."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()  # bytes not yet split into lines
        self._scan = 0  # no b"\n" in _buf[:_scan]
        self._lines: list[bytes] = []  # complete lines of the frame being built
        self._frame_bytes = 0  # size of _lines, for the bound
        self._started = False  # the leading BOM check has been done
        self._skipping = False  # dropping the rest of an oversized frame nobody needs
        self.skipped = 0  # oversized frames dropped so far

    @property
    def pending(self) -> bool:
        """Tell whether a partial frame is buffered (True at EOF means the stream was cut mid-frame)."""
        return bool(self._buf) or bool(self._lines) or self._skipping

    def feed(self, data: bytes) -> list[SSEFrame]:
        """Consume bytes and return the frames they completed, in order."""
        self._buf += data
        if not self._started:
            if len(self._buf) < len(_BOM) and _BOM.startswith(bytes(self._buf)):
                return []
            if self._buf.startswith(_BOM):
                del self._buf[: len(_BOM)]
            self._started = True
        frames: list[SSEFrame] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", max(start, self._scan))
            if end < 0:
                break
            line = bytes(self._buf[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._skipping:
                if not line:
                    self._skipping = False
                continue
            if line:
                self._lines.append(line)
                self._frame_bytes += len(line) + 1
                self._check_size(0)
            elif self._lines:
                frame = self._dispatch()
                if frame is not None:
                    frames.append(frame)
        del self._buf[:start]
        if self._skipping:
            self._buf.clear()  # the rest of a line of the frame being dropped
        self._scan = len(self._buf)
        self._check_size(len(self._buf))
        return frames

    def close(self) -> None:
        """Mark end of stream; raise SSEIncompleteError if a partial frame was left over."""
        pending = self.pending
        self._reset()
        if pending:
            raise SSEIncompleteError("stream ended in the middle of an SSE frame")

    def _check_size(self, extra: int) -> None:
        """Bound the frame being built (``extra``: its partial last line); a progress frame is dropped instead."""
        if self._frame_bytes + extra <= self.max_frame_bytes:
            return
        head = self._lines[0] if self._lines else bytes(self._buf[:256])
        if not _SKIPPABLE.match(head):
            self._reset()
            raise SSEFrameTooLarge(f"SSE frame larger than {self.max_frame_bytes} bytes")
        self._skipping, self.skipped = True, self.skipped + 1
        self._lines, self._frame_bytes = [], 0
        if extra:
            self._buf.clear()
            self._scan = 0

    def _reset(self) -> None:
        self._buf.clear()
        self._scan = 0
        self._lines = []
        self._frame_bytes = 0
        self._skipping = False

    def _dispatch(self) -> SSEFrame | None:
        lines, self._lines, self._frame_bytes = self._lines, [], 0
        event: str | None = None
        data: list[str] = []
        for raw in lines:
            if raw.startswith(b":"):
                continue  # comment
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SSEDecodeError(f"SSE frame is not valid UTF-8 ({e.reason})") from e
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            # "id", "retry" and unknown fields are ignored: Dify does not send them.
        if event is None and not data:
            return None
        return SSEFrame(event=event, data="\n".join(data) if data else None)

"""Incremental Server-Sent Events parser that works on bytes.

Dify (>= 1.8.1) writes raw UTF-8, so a character can be split across network reads: bytes are
buffered, split into lines on ``b"\\n"`` (a CR before it is dropped, so CRLF works too) and each
complete frame is decoded at once.  ``str.splitlines`` is never used, because it breaks at the raw
U+2028/U+2029/U+0085 that orjson leaves inside JSON strings.

    SSEError
    ├── SSEFrameTooLarge        one frame grew past ``max_frame_bytes``
    ├── SSEDecodeError          a complete frame is not valid UTF-8
    └── SSEIncompleteError      ``close()`` found a partial frame (EOF mid-frame)

``ChatEventDecoder`` then maps the JSON of each data frame to the typed events the client yields.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from services.errors import DifyStreamError

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
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

    @property
    def pending(self) -> bool:
        """Tell whether a partial frame is buffered (True at EOF means the stream was cut mid-frame)."""
        return bool(self._buf) or bool(self._lines)

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
            if line:
                self._lines.append(line)
                self._frame_bytes += len(line) + 1
                self._check_size(0)
            elif self._lines:
                frame = self._dispatch()
                if frame is not None:
                    frames.append(frame)
        del self._buf[:start]
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
        if self._frame_bytes + extra > self.max_frame_bytes:
            self._reset()
            raise SSEFrameTooLarge(f"SSE frame larger than {self.max_frame_bytes} bytes")

    def _reset(self) -> None:
        self._buf.clear()
        self._scan = 0
        self._lines = []
        self._frame_bytes = 0

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


@dataclass(frozen=True)
class Started:
    """The stream's ids, from the first data frame carrying them (task_id is needed for stop)."""

    conversation_id: str
    message_id: str
    task_id: str


@dataclass(frozen=True)
class Delta:
    """Text to append to the answer."""

    text: str


@dataclass(frozen=True)
class Replace:
    """message_replace: the whole answer so far becomes ``text``."""

    text: str


@dataclass(frozen=True)
class AnswerFile:
    """A file of the answer (``message_file``, ``message_end.files``, a workflow's output files).

    ``url`` may be relative to Dify's base (a signed ``/files/tools/…`` URL); ``source`` is the
    upload a file came from (a Chatflow's outputs can hand the user's own uploads back).
    """

    url: str
    type: str
    name: str = ""
    mime: str = ""
    source: str = ""


@dataclass(frozen=True)
class ConversationDropped:
    """Dify rejected the stored conversation_id (404); the caller must forget it."""


@dataclass(frozen=True)
class Finished:
    """The answer is complete."""

    conversation_id: str | None


DifyEvent = Started | Delta | Replace | AnswerFile | ConversationDropped | Finished

MAX_ANSWER_FILES = 50
"""Files taken from one answer at most (the rest are ignored): bounds what an answer can make us fetch."""


class ChatEventDecoder:
    """Turn the JSON of Dify chat data frames (dify-api.md §3.3, §3.4) into DifyEvents."""

    def __init__(self) -> None:
        self._parts: list[str] = []  # the answer so far, joined only when compared (never per delta)
        self._size = 0
        self.conversation_id: str | None = None
        self.started = False
        self.agent = False  # agent_message deltas seen (New Agent repeats the answer in a closing message)
        self.workflow = False  # Chatflow: message_end is followed by workflow_finished
        self.message_ended = False
        self._files: set[str] = set()  # the answer files already yielded (the same file comes in several events)

    @property
    def text(self) -> str:
        """The whole answer decoded so far."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def handle(self, data: str) -> list[DifyEvent]:
        """Return the events one data frame produces; raise DifyStreamError on error frames."""
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise DifyStreamError("invalid_frame", "SSE data is not JSON") from e
        if not isinstance(obj, dict):
            raise DifyStreamError("invalid_frame", "SSE data is not a JSON object")
        event = obj.get("event")
        out: list[DifyEvent] = []
        ids = [obj.get(k) for k in ("conversation_id", "message_id", "task_id")]
        if not self.started and all(isinstance(v, str) and v for v in ids):
            self.started = True
            self.conversation_id = ids[0]
            out.append(Started(str(ids[0]), str(ids[1]), str(ids[2])))
        if "workflow_run_id" in obj:
            self.workflow = True
        if event in ("message", "agent_message") or (event == "message_file" and "answer" in obj):
            text = obj.get("answer")
            if not isinstance(text, str) or not text:
                return out
            if event == "agent_message":
                self.agent = True
            elif event == "message" and self.agent and len(text) == self._size and text == self.text:
                return out  # New Agent's closing message repeats the whole answer
            self._parts.append(text)
            self._size += len(text)
            out.append(Delta(text))
        elif event == "message_file":
            if obj.get("belongs_to") != "user":
                out += self._answer_files([obj])
        elif event == "message_replace":
            replaced = str(obj.get("answer") or "")
            self._parts, self._size = [replaced], len(replaced)
            out.append(Replace(replaced))
        elif event == "message_end":
            self.message_ended = True
            out += self._answer_files(obj.get("files"))
            if not self.workflow:
                out.append(Finished(self.conversation_id))
        elif event == "workflow_finished":
            wf = obj.get("data")
            wf = wf if isinstance(wf, dict) else {}
            status = wf.get("status")
            if status in ("failed", "stopped"):
                raise DifyStreamError(f"workflow_{status}", str(wf.get("error") or f"workflow {status}"))
            out += self._answer_files(wf.get("files"))
            out.append(Finished(self.conversation_id))
        elif event == "error":
            status = obj.get("status")
            raise DifyStreamError(
                str(obj.get("code") or "stream_error"),
                str(obj.get("message") or ""),
                status if isinstance(status, int) else None,
            )
        elif event is not None:
            log.debug("dify: ignoring %s frame", event)
        return out

    def _answer_files(self, items: object) -> list[DifyEvent]:
        """The new files among ``items`` (Dify file objects); malformed entries are skipped."""
        out: list[DifyEvent] = []
        for item in items if isinstance(items, list) else []:
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str) or not url or len(self._files) >= MAX_ANSWER_FILES:
                continue
            source = _str(item.get("related_id"))
            key = source or _str(item.get("id")) or url.partition("?")[0]
            if key in self._files:
                continue
            self._files.add(key)
            out.append(AnswerFile(url=url, type=_str(item.get("type")) or "custom",
                                  name=_str(item.get("filename")), mime=_str(item.get("mime_type")), source=source))
        return out


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""

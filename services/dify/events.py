"""The typed events of a Dify chat answer, decoded from the JSON of its SSE data frames (dify-api.md §3.3, §3.4)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from services.errors import DifyStreamError

log = logging.getLogger(__name__)


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

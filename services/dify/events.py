"""The typed events of a Dify chat answer, decoded from the JSON of its SSE data frames (dify-api.md §3.3, §3.4)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from services.dify.think import ThinkSplitter
from services.errors import DifyStreamError
from utils.payload import as_dict

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
class Progress:
    """What the answer is doing before (or while) it writes: ``tool`` and ``node`` name a step, ``reasoning``
    is a delta of a reasoning model's thoughts (a ``reasoning_chunk``, or its ``<think>`` block)."""

    kind: str
    text: str


@dataclass(frozen=True)
class FormRequired:
    """A Chatflow paused at a Human Input form (Dify >= 1.14): what it says and what a choice sends back.

    ``values`` are the fields' resolved defaults; ``complete`` says every field has one (a button
    alone can then answer the form); ``token`` is None when the form cannot be submitted by API.
    """

    run_id: str
    token: str | None
    title: str
    content: str
    actions: tuple[tuple[str, str], ...]
    values: dict[str, str]
    complete: bool


@dataclass(frozen=True)
class Paused:
    """The run stopped at its form(s); the stream ends here (a choice resumes it)."""

    run_id: str


@dataclass(frozen=True)
class ConversationDropped:
    """Dify rejected the stored conversation_id (404); the caller must forget it."""


@dataclass(frozen=True)
class Finished:
    """The answer is complete; ``usage`` is ``message_end``'s token usage and latency (may be empty)."""

    conversation_id: str | None
    usage: dict[str, Any] = field(default_factory=dict)


DifyEvent = Started | Delta | Replace | AnswerFile | Progress | FormRequired | Paused | ConversationDropped | Finished

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
        self.usage: dict[str, Any] = {}  # message_end's metadata.usage: tokens, price, latency
        self._files: set[str] = set()  # the answer files already yielded (the same file comes in several events)
        self._think = ThinkSplitter()
        self._step = ("", "")  # the last agent step reported (thought id, tool)

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
            out += self._text(text)
        elif event == "message_file":
            if obj.get("belongs_to") != "user":
                out += self._answer_files([obj])
        elif event == "message_replace":
            replaced = str(obj.get("answer") or "")
            self._parts, self._size = [replaced], len(replaced)
            out.append(Replace(replaced))
        elif event == "message_end":
            self.message_ended = True
            self.usage = as_dict(as_dict(obj.get("metadata")).get("usage"))
            out += self._answer_files(obj.get("files"))
            if not self.workflow:
                out += self._text("", end=True)
                out.append(Finished(self.conversation_id, self.usage))
        elif event == "workflow_finished":
            wf = as_dict(obj.get("data"))
            status = wf.get("status")
            if status in ("failed", "stopped"):
                raise DifyStreamError(f"workflow_{status}", str(wf.get("error") or f"workflow {status}"))
            out += self._answer_files(wf.get("files"))
            out += self._text("", end=True)
            out.append(Finished(self.conversation_id, self.usage))
        elif event == "error":
            status = obj.get("status")
            raise DifyStreamError(
                str(obj.get("code") or "stream_error"),
                str(obj.get("message") or ""),
                status if isinstance(status, int) else None,
            )
        elif event == "human_input_required":
            out += _form(_str(obj.get("workflow_run_id")), obj.get("data"))
        elif event == "workflow_paused":
            out += self._text("", end=True)
            out += [Paused(_str(obj.get("workflow_run_id"))), Finished(self.conversation_id, self.usage)]
        elif event in ("agent_thought", "node_started", "reasoning_chunk"):
            out += self._progress(event, obj)
        elif event is not None:
            log.debug("dify: ignoring %s frame", event)
        return out

    def _text(self, text: str, *, end: bool = False) -> list[DifyEvent]:
        """A text delta, with a reasoning model's leading ``<think>`` block taken out as progress."""
        answer, reasoning = self._think.feed(text, end=end)
        out: list[DifyEvent] = [Progress("reasoning", reasoning)] if reasoning else []
        if answer:
            self._parts.append(answer)
            self._size += len(answer)
            out.append(Delta(answer))
        return out

    def _progress(self, event: str, obj: dict[str, object]) -> list[DifyEvent]:
        data = as_dict(obj.get("data"))
        if event == "reasoning_chunk":
            reasoning = data.get("reasoning")
            return [Progress("reasoning", reasoning)] if isinstance(reasoning, str) and reasoning else []
        if event == "node_started":
            title = data.get("title")
            inner = data.get("iteration_id") or data.get("loop_id")  # a step inside a loop: its loop was named
            skip = data.get("node_type") in ("start", "answer", "end") or inner
            return [Progress("node", title)] if isinstance(title, str) and title and not skip else []
        tool, thought_id = _str(obj.get("tool")), _str(obj.get("id"))
        if not tool or obj.get("observation") or self._step == (thought_id, tool):
            return []
        self._step = (thought_id, tool)
        labels = as_dict(obj.get("tool_labels"))
        names = [_label(labels.get(name), name) for name in tool.split(";") if name]
        return [Progress("tool", "、".join(names))]

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


def _form(run_id: str, data: object) -> list[DifyEvent]:
    """The form of a ``human_input_required`` frame (a malformed one: nothing)."""
    if not isinstance(data, dict) or not run_id:
        return []
    actions = tuple((_str(a.get("id")), _str(a.get("title")) or _str(a.get("id")))
                    for a in data.get("actions") or [] if isinstance(a, dict) and _str(a.get("id")))
    names = [_str(i.get("output_variable_name")) for i in data.get("inputs") or [] if isinstance(i, dict)]
    resolved = as_dict(data.get("resolved_default_values"))
    values = {n: str(resolved[n]) for n in names if n in resolved and resolved[n] is not None}
    token = _str(data.get("form_token")) if data.get("display_in_ui") is not False else ""
    return [FormRequired(run_id=run_id, token=token or None, title=_str(data.get("node_title")),
                         content=_str(data.get("form_content")), actions=actions, values=values,
                         complete=len(values) == len(names))]


def _label(labels: object, name: str) -> str:
    """A tool's display name: its Chinese label, else its English one, else its name."""
    if isinstance(labels, dict):
        for key in ("zh_Hans", "en_US"):
            if isinstance(labels.get(key), str) and labels[key]:
                return str(labels[key])
    return name


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""

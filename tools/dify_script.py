"""The Dify simulator's vocabulary: how one query is answered (``Script``), what it records, what it shares."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from tools.dify_files import ToolFile
from tools.dify_forms import Form

USAGE = {
    "prompt_tokens": 12,
    "prompt_unit_price": "0.0",
    "prompt_price_unit": "0.0",
    "prompt_price": "0.0",
    "completion_tokens": 34,
    "completion_unit_price": "0.0",
    "completion_price_unit": "0.0",
    "completion_price": "0.0",
    "total_tokens": 46,
    "total_price": "0.0",
    "currency": "USD",
    "latency": 0.5,
    "time_to_first_token": None,
    "time_to_generate": None,
}


@dataclass
class Script:
    """How the simulator answers one query (every knob defaults to a plain, fast, successful answer)."""

    answer: str = ""
    deltas: list[str] | None = None  # explicit deltas (overrides splitting ``answer``)
    delta_size: int = 2  # characters per delta when splitting ``answer``
    delay: float = 0.0  # seconds between frames
    flavour: Literal["new", "old"] = "new"  # ≥ 1.8.1 compact raw UTF-8 / ≤ 1.8.0 ASCII json.dumps
    app: Literal["chat", "agent", "advanced-chat"] = "chat"
    rechunk: Literal["frame", "random", "bytewise", "merged"] = "frame"  # frames → HTTP chunks
    seed: int = 0  # for rechunk="random"
    chunk_delay: float = 0.0  # seconds between HTTP chunks (a slow trickle, e.g. with "bytewise")
    ping_every: int = 0  # `event: ping` after every N data frames (0 = never)
    leading_ping: bool | None = None  # None: only for advanced-chat (≥ 1.13 relay)
    replace_at: int | None = None  # message_replace after delta #N ...
    replace_text: str = ""  # ... carrying this full replacement
    error_after: int | None = None  # an error frame after N deltas instead of the normal end
    error_code: str = "completion_request_error"
    error_message: str = "[openai] Rate Limit Error, Error code: 429"
    error_status: int = 400
    stopped_after: int | None = None  # the run is stopped in Dify (its console) after N deltas
    eof_after: int | None = None  # end the stream after N deltas without a terminal event
    eof_abrupt: bool = False  # ... by closing the socket instead of a clean last chunk
    stall: float = 0.0  # seconds of silence after the deltas, before the terminal frame
    pings_during_stall: bool = False
    ping_interval: float = 10.0  # seconds between pings during a stall
    message_file_quirk: bool = False  # a real message_file frame, then text labelled "message_file" (§7.9)
    closing_message: bool = False  # agent: New Agent's closing `message` repeating the whole answer
    node_payload: int = 0  # advanced-chat: characters of prompt text inside the LLM node_finished frame
    http_status: int = 200  # non-200: answer with Dify's JSON error envelope (or HTML if html_error)
    error_envelope_code: str = ""
    error_envelope_message: str = ""
    html_error: bool = False
    fail_times: int = 0  # only the first N requests get http_status (0 = all of them)
    think: str = ""  # a reasoning model's thoughts: a leading <think> block in the answer's deltas
    tools: tuple[str, ...] = ()  # agent: tools it calls (agent_thought frames) before it answers
    form: Form | None = None  # advanced-chat: pause at a Human Input form after the answer's first part
    files: tuple[ToolFile, ...] = ()  # the answer's files: message_file frames, or a Chatflow's message_end.files

    def split(self) -> list[str]:
        """Return the text deltas this script streams."""
        if self.deltas is not None:
            return list(self.deltas)
        size = max(1, self.delta_size)
        text = f"<think>{self.think}</think>\n\n{self.answer}" if self.think else self.answer
        return [text[i : i + size] for i in range(0, len(text), size)]


DEFAULT_FILE_UPLOAD: dict[str, Any] = {
    "enabled": True, "allowed_file_types": ["image", "document"], "allowed_file_upload_methods": ["local_file"],
    "number_limits": 5, "image": {"enabled": True, "number_limits": 5, "transfer_methods": ["local_file"]}}
"""An app that reads images and documents (Dify's /parameters ``file_upload`` shape)."""
KINDS = {"image": ("jpg", "jpeg", "png", "webp", "gif", "svg"), "video": ("mp4", "mov", "mpeg", "webm"),
          "audio": ("mp3", "m4a", "wav", "amr", "mpga")}


@dataclass(frozen=True)
class Upload:
    """One file received on ``POST /v1/files/upload``."""

    id: str
    name: str
    mime: str
    user: str
    data: bytes


@dataclass(frozen=True)
class RecordedRequest:
    """One request the simulator received; ``headers`` has lower-case names."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    time: float


class Task:
    def __init__(self, user: str) -> None:
        self.user = user
        self.stop = threading.Event()


class Abort(Exception):
    """The simulator is shutting down: drop the connection."""


@dataclass(frozen=True)
class Ids:
    conversation: str
    message: str
    task: str
    created: int
    turn: int

"""Human-input forms in the simulated Chatflow (Dify >= 1.14): a pause, the submit, and the resumed run.

A scripted answer with a ``Form`` streams its first part, then ``human_input_required`` and
``workflow_paused``, and ends. ``POST /v1/form/human_input/{token}`` records the chosen action;
``GET /v1/workflow/{run_id}/events?user=`` pings until then and streams the rest of the answer
(only the new text) with the same conversation, message and task ids. Shapes: the research notes of
Dify 1.14.1 (``core/app/entities/task_entities.py``, ``controllers/service_api/app/human_input_form.py``).
Nothing here is used in production.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Form:
    """A Human Input node's form: what it says, its fields (with defaults) and its buttons."""

    title: str = "审批"
    content: str = "是否继续？"
    actions: tuple[tuple[str, str], ...] = (("approve", "同意"), ("reject", "驳回"))
    inputs: tuple[tuple[str, str | None], ...] = ()  # (name, default); None: the user must type it
    display_in_ui: bool = True
    then: dict[str, str] = field(default_factory=dict)  # action id -> the rest of the answer
    next: dict[str, Form] = field(default_factory=dict)  # action id -> the form the resumed run pauses at


@dataclass
class PausedRun:
    """A run waiting at its form."""

    run_id: str
    token: str
    user: str
    form: Form
    ids: Any  # the paused answer's Ids: the resumed run keeps them
    chosen: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    submitted: threading.Event = field(default_factory=threading.Event)


class Forms:
    """The simulator's paused runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: dict[str, PausedRun] = {}  # run id -> run
        self.submits: list[dict[str, Any]] = []  # the submit bodies received, with their token
        self.fail_next: list[int] = []  # statuses the next submits get (e.g. 502 from a proxy, after taking it)

    def pause(self, run_id: str, user: str, form: Form, ids: Any) -> dict[str, Any]:
        """Register a paused run; return the ``data`` of its ``human_input_required`` frame."""
        run = PausedRun(run_id, secrets.token_urlsafe(16)[:22], user, form, ids)
        with self._lock:
            self.runs[run_id] = run
        defaults = {name: value for name, value in form.inputs if value is not None}
        return {"form_id": str(uuid.uuid4()), "node_id": "1763600000123", "node_title": form.title,
                "form_content": form.content + "".join(f"\n\n{{{{#$output.{n}#}}}}" for n, _ in form.inputs),
                "inputs": [{"type": "paragraph", "output_variable_name": n,
                            "default": None if v is None else {"type": "constant", "selector": [], "value": v}}
                           for n, v in form.inputs],
                "actions": [{"id": a, "title": t, "button_style": "primary" if i == 0 else "default"}
                            for i, (a, t) in enumerate(form.actions)],
                "display_in_ui": form.display_in_ui, "form_token": run.token,
                "resolved_default_values": defaults, "expiration_time": int(time.time()) + 36 * 3600}

    def submit(self, token: str, body: dict[str, Any]) -> tuple[int, str, str]:
        """Handle a submit: (HTTP status, error code, message); 200 with empty code on success."""
        user, action, inputs = body.get("user"), body.get("action"), body.get("inputs")
        if not isinstance(user, str) or not user:
            return 400, "invalid_param", "Arg user must be provided."
        if not isinstance(action, str) or not isinstance(inputs, dict):
            return 400, "invalid_param", "1 validation error for HumanInputFormSubmitPayload"
        with self._lock:
            run = next((r for r in self.runs.values() if r.token == token and r.form.display_in_ui), None)
            if run is None:
                return 404, "not_found", "Form not found"
            if run.chosen is not None:
                return 412, "human_input_form_submitted", "This form has already been submitted by another user"
            if action not in dict(run.form.actions):
                return 400, "invalid_form_data", f"Invalid action: {action}"
            missing = [n for n, _ in run.form.inputs if n not in inputs]
            if missing:
                return 400, "invalid_form_data", f"Missing required inputs: {', '.join(missing)}"
            run.chosen, run.inputs = action, dict(inputs)
            self.submits.append({"token": token, **body})
            failure = self.fail_next.pop(0) if self.fail_next else None
        run.submitted.set()
        if failure is not None:  # taken, but the answer was lost on its way back
            return failure, f"http_{failure}", "Bad Gateway"
        return 200, "", ""

    def waiting(self, run_id: str, user: str) -> PausedRun | None:
        """The paused run ``user`` may re-attach to (None: unknown, or another user's: 404)."""
        with self._lock:
            run = self.runs.get(run_id)
        return run if run is not None and run.user == user else None

"""Suggested questions as WeCom button cards (wecom-protocol.md §2.3), and what a click on one asks.

A card's questions are kept in Redis under its ``task_id`` (``Keys.card``), so a click
(``template_card_event``) on any replica finds the question it stands for.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from services.delivery import join
from services.dify import FormRequired
from services.streams.store import StreamStore

MAX_BUTTONS = 6  # WeCom's button_list limit
MAX_BUTTON_TEXT = 50  # characters shown on a button (the question itself is asked whole)
MAX_FORM_TEXT = 500  # characters of a form's text on its card
_PLACEHOLDER = re.compile(r"\{\{#\$output\.([A-Za-z_][A-Za-z0-9_]*)#\}\}")  # where a form field's value goes


def question_card(task_id: str, title: str, questions: list[str], text: str = "") -> dict[str, Any]:
    """A ``button_interaction`` card with one button per question (at most six)."""
    card: dict[str, Any] = {"card_type": "button_interaction", "main_title": {"title": _cut(title)}}
    if text:
        card["sub_title_text"] = text[:MAX_FORM_TEXT]
    card["button_list"] = [{"text": _cut(q), "style": 1, "key": f"q{n}"} for n, q in enumerate(questions[:MAX_BUTTONS])]
    card["task_id"] = task_id
    return card


def new_task_id() -> str:
    """A card's unique id (WeCom: at most 128 bytes of ``[0-9A-Za-z_-@]``)."""
    return f"q{uuid.uuid4().hex}"


def clean_questions(raw: object) -> list[str]:
    """Dify's questions (a list of strings), stripped, non-empty, at most six."""
    items = raw if isinstance(raw, list) else []
    return [q.strip() for q in items if isinstance(q, str) and q.strip()][:MAX_BUTTONS]


def form_card(task_id: str, form: FormRequired, answer: str = "") -> dict[str, Any]:
    """A ``button_interaction`` card for a Human Input form: its text (fields filled in) and one button per action.

    ``answer`` (the text before the form, when the card goes alone) comes first.
    """
    filled = _PLACEHOLDER.sub(lambda m: form.values.get(m.group(1), ""), form.content).strip()
    text = join(answer.strip()[-MAX_FORM_TEXT:], filled)
    card: dict[str, Any] = {"card_type": "button_interaction", "main_title": {"title": form.title or "请选择"}}
    if text:
        card["sub_title_text"] = text[-MAX_FORM_TEXT:]  # the form's own words last: keep them
    card["button_list"] = [{"text": _cut(title), "style": 1 if n == 0 else 2, "key": f"a{n}"}
                           for n, (_, title) in enumerate(form.actions[:MAX_BUTTONS])]
    card["task_id"] = task_id
    return card


@dataclass(frozen=True)
class Click:
    """What a click on one of our cards asks: a question, or a form's action."""

    card: dict[str, Any]
    label: str  # the clicked button's text, for the card's update
    question: str = ""
    form: dict[str, Any] | None = None  # token, run_id, values, and the chosen ``action``


def keep_card(store: StreamStore, card: dict[str, Any], questions: list[str], ttl: int,
              form: dict[str, Any] | None = None) -> None:
    """Remember a card and its questions (or its form) for its clicks (raises StoreUnavailable)."""
    record = json.dumps({"card": card, "questions": questions[:MAX_BUTTONS], "form": form}, ensure_ascii=False)
    store.put_lease(store.keys.card(card["task_id"]), record, ttl * 1000)


def clicked(store: StreamStore, task_id: str, key: str) -> Click | None:
    """What a click (``task_id``, button ``key``) stands for; None if the card is unknown or expired."""
    raw = store.get_value(store.keys.card(task_id)) if task_id else None
    try:
        record = json.loads(raw) if raw else {}
        card, questions, form = record["card"], record["questions"], record.get("form")
        number = int(key[1:]) if key[:1] in ("q", "a") else -1
        if isinstance(form, dict) and key.startswith("a"):
            action, label = form["actions"][number] if 0 <= number < len(form["actions"]) else ("", "")
            return Click(card, str(label), form={**form, "action": str(action)}) if action else None
        if key.startswith("q") and 0 <= number < len(questions):
            return Click(card, str(questions[number]), question=str(questions[number]))
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return None


def _cut(question: str) -> str:
    return question if len(question) <= MAX_BUTTON_TEXT else question[: MAX_BUTTON_TEXT - 1] + "…"

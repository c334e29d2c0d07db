"""Suggested questions as WeCom button cards (wecom-protocol.md §2.3), and what a click on one asks.

A card's questions are kept in Redis under its ``task_id`` (``Keys.card``), so a click
(``template_card_event``) on any replica finds the question it stands for.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from services.streams.store import StreamStore

MAX_BUTTONS = 6  # WeCom's button_list limit
MAX_BUTTON_TEXT = 50  # characters shown on a button (the question itself is asked whole)


def question_card(task_id: str, title: str, questions: list[str], text: str = "") -> dict[str, Any]:
    """A ``button_interaction`` card with one button per question (at most six)."""
    card: dict[str, Any] = {"card_type": "button_interaction", "main_title": {"title": title}}
    if text:
        card["sub_title_text"] = text
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


def keep_card(store: StreamStore, card: dict[str, Any], questions: list[str], ttl: int) -> None:
    """Remember a card and its questions for its clicks (raises StoreUnavailable)."""
    record = json.dumps({"card": card, "questions": questions[:MAX_BUTTONS]}, ensure_ascii=False)
    store.put_lease(store.keys.card(card["task_id"]), record, ttl * 1000)


def clicked(store: StreamStore, task_id: str, key: str) -> tuple[dict[str, Any], str] | None:
    """The card and the question a click (``task_id``, button ``key``) stands for; None if unknown or expired."""
    raw = store.get_value(store.keys.card(task_id)) if task_id else None
    try:
        record = json.loads(raw) if raw else {}
        questions, card = record["questions"], record["card"]
        number = int(key.removeprefix("q")) if key.startswith("q") else -1
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(card, dict) or not isinstance(questions, list) or not 0 <= number < len(questions):
        return None
    return card, str(questions[number])


def _cut(question: str) -> str:
    return question if len(question) <= MAX_BUTTON_TEXT else question[: MAX_BUTTON_TEXT - 1] + "…"

"""Text helpers: @-mention stripping, UTF-8 limits, frame fitting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.frames import fit
from utils.text import clean, strip_mention, utf8_len, utf8_prefix


@pytest.mark.parametrize(("text", "names", "expected"), [
    ("@RobotA hello robot", ["RobotA"], "hello robot"),
    ("@RobotA  两个空格", ["RobotA"], "两个空格"),
    ("@RobotA\u2005全角空格", ["RobotA"], "全角空格"),
    ("hello@项目开发管理助手 ", ["项目开发管理助手"], "hello"),
    ("你好@助手", ["助手"], "你好"),
    ("@My Bot /help", ["My Bot"], "/help"),
    ("@RobotA", ["RobotA"], ""),
    ("@RobotA 你好 @RobotA", ["RobotA"], "你好"),
    ("mail bob@example.com please", ["example"], "mail bob@example.com please"),
    ("@RobotA write to a@RobotA.com", ["RobotA"], "write to a@RobotA.com"),
    ("see https://x.com/@RobotA/page", ["RobotA"], "see https://x.com/@RobotA/page"),
    ("@RobotAB is someone else", ["RobotA"], "@RobotAB is someone else"),
    ("@x hi", [], "hi"),
    ("no mention", [], "no mention"),
    ("a@b.com", [], "a@b.com"),
])
def test_strip_mention(text: str, names: list[str], expected: str) -> None:
    assert strip_mention(text, names) == expected


@given(st.text(), st.integers(min_value=0, max_value=200))
def test_utf8_prefix_never_splits_a_character(text: str, limit: int) -> None:
    text = clean(text)
    prefix = utf8_prefix(text, limit)
    assert text.startswith(prefix)
    assert utf8_len(prefix) <= limit
    if utf8_len(text) > limit:
        assert utf8_len(text[: len(prefix) + 1]) > limit


@given(st.text(max_size=300), st.text(max_size=40), st.integers(min_value=0, max_value=400))
def test_fit_keeps_the_whole_note_and_a_prefix(text: str, note: str, limit: int) -> None:
    text, note = clean(text), clean(note)
    content, shown = fit(text, note, limit)
    if utf8_len(note) + 2 <= limit:
        assert utf8_len(content) <= limit
        assert content.endswith(note)
    assert content.startswith(text[:shown])


def test_clean_replaces_lone_surrogates() -> None:
    assert clean("ok \ud83e!") == "ok \ufffd!"
    assert clean("正常 🤖") == "正常 🤖"

"""Progress while an answer is prepared (PROGRESS: off, steps, think): agent tools, workflow nodes and a
reasoning model's <think> block, shown beside the answer, cut first, and gone from the final answer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dify.think import ThinkSplitter
from tests.helpers import InProcessWeCom, contents
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message
from utils.text import utf8_len


def frames_of(make_app: Any, signer: WeComSigner, query: str, **changes: Any) -> list[str]:
    wecom = InProcessWeCom(make_app(**changes).test_client(), signer)
    first = wecom.send(text_message(query))
    assert first is not None
    return contents(wecom.until_finished(first["stream"]["id"], interval=0.02))


def test_an_agents_tools_show_in_a_think_block_that_goes_at_the_end(make_app: Any, signer: WeComSigner,
                                                                     dify: DifySimulator) -> None:
    dify.script("几点了", Script(answer="现在十点。", app="agent", tools=("current_time",), delay=0.3, delta_size=1))
    seen = frames_of(make_app, signer, "几点了")
    assert "<think>\n▸ 正在使用工具：current_time\n</think>" in seen
    assert any(f.startswith("<think>\n▸ 正在使用工具：current_time\n</think>\n\n现") for f in seen)  # above the text
    assert seen[-1] == "现在十点。"  # steps are not kept


def test_a_reasoning_models_thoughts_stay_in_their_block(make_app: Any, signer: WeComSigner,
                                                         dify: DifySimulator) -> None:
    dify.script("q", Script(think="先算一下：1+1=2。", answer="等于 2。", delta_size=3, delay=0.1))
    seen = frames_of(make_app, signer, "q")
    assert seen[-1] == "<think>\n先算一下：1+1=2。\n</think>\n\n等于 2。"
    assert all("<think><think>" not in f and f.count("<think>") <= 1 for f in seen)


@pytest.mark.parametrize(("mode", "expected_line"), [("steps", "正在处理：LLM"), ("off", None)])
def test_steps_show_one_line_and_off_shows_nothing(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                   mode: str, expected_line: str | None) -> None:
    dify.script("q", Script(think="想想", answer="好的。", app="advanced-chat", delta_size=2, delay=0.15))
    seen = frames_of(make_app, signer, "q", progress=mode)
    assert seen[-1] == "好的。"  # no block, no line, in both
    assert not any("<think>" in f for f in seen)
    if expected_line:
        assert any(f == expected_line or f.endswith(f"\n\n{expected_line}") for f in seen)
        assert "正在思考…" in seen or any(f.endswith("\n\n正在思考…") for f in seen)
    else:
        assert not any("正在" in f for f in seen)


def test_progress_is_cut_first_when_the_frame_is_full(make_app: Any, signer: WeComSigner, dify: DifySimulator) -> None:
    answer = "答" * 6700  # 20100 bytes: the answer fits, a long think block cannot
    dify.script("long", Script(think="想" * 3000, answer=answer, delta_size=500))
    seen = frames_of(make_app, signer, "long")
    assert all(utf8_len(f) <= 20480 for f in seen)
    assert seen[-1].endswith(answer) and seen[-1].startswith("<think>\n")  # what room is left holds the block's end
    assert seen[-1].split("\n</think>")[0].endswith("想")


@given(st.text(alphabet="ab<>/thinkTHINK \n", max_size=20), st.text(alphabet="xy <>\n", max_size=20),
       st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_the_think_block_is_found_however_the_deltas_split_it(reasoning: str, answer: str, cuts: list[int]) -> None:
    while "</think>" in reasoning:  # (removing one can make another)
        reasoning = reasoning.replace("</think>", "")
    text = f"<think>{reasoning}</think>\n\n{answer.lstrip()}"
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    splitter, got_answer, got_reasoning = ThinkSplitter(), "", ""
    for piece in pieces:
        a, r = splitter.feed(piece)
        got_answer, got_reasoning = got_answer + a, got_reasoning + r
    a, r = splitter.feed("", end=True)
    assert (got_answer + a, got_reasoning + r) == (answer.lstrip(), reasoning)


def test_a_think_tag_later_in_the_answer_is_the_answers_own() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("用 <think> 标签包住推理。") == ("用 <think> 标签包住推理。", "")
    assert ThinkSplitter().feed("<thi", end=True) == ("<thi", "")

"""Moderation: a blocked question never reaches Dify; a blocked answer word is never shown (frames, follow-up)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from config import Settings
from services.moderation import AnswerGuard, ModerationUnavailable, RemoteModeration, WordList
from tests.helpers import InProcessWeCom, wait_for
from tests.hook_servers import ModerationServer
from tests.response_server import ResponseServer
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message

WORDS = ["机密", "内部代号", "secret plan"]


@given(st.text(alphabet="机密内部代号密码secret plan 的是。", max_size=60), st.lists(st.integers(1, 7), max_size=30))
@settings(max_examples=300, deadline=None)
def test_the_guard_never_lets_a_blocked_word_through_however_the_text_is_cut(text: str, cuts: list[int]) -> None:
    words = WordList(WORDS)
    guard = AnswerGuard(words, None, "*")
    shown, rest, parts = "", text, []
    for n in cuts:
        parts.append(rest[:n])
        rest = rest[n:]
    parts.append(rest)

    async def run() -> str:
        out = ""
        for part in parts:
            out += await guard.feed(part)
            assert not words.blocked(out)  # never, at any moment (a shown prefix is never taken back)
        return out + await guard.end()

    shown = asyncio.run(run())
    assert shown == words.redact(text, "*")[0]  # and in the end exactly the redacted answer


def test_a_word_list_file_skips_comments_and_blanks(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# 注释\n\n 机密 \nSecret Plan\n", encoding="utf-8")
    words = WordList.from_file(path)
    assert words.words == ["Secret Plan", "机密"] and words.blocked("the SECRET PLAN") and not words.blocked("注释")


@pytest.fixture
def words_file(tmp_path: Path) -> str:
    path = tmp_path / "blocked.txt"
    path.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def moderation() -> Iterator[ModerationServer]:
    server = ModerationServer(["违禁"], preset="这个问题不能回答。")
    yield server
    server.close()


class Chat(InProcessWeCom):
    def converse(self, payload: dict[str, object], *, interval: float = 0.05) -> list[dict[str, Any]]:
        first = self.send(payload)
        assert first is not None
        return [first] if first["stream"]["finish"] else self.until_finished(first["stream"]["id"], interval=interval)


def wecom_for(app: Flask, signer: WeComSigner) -> Chat:
    return Chat(app.test_client(), signer)


def test_a_blocked_question_gets_the_refusal_and_never_reaches_dify(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                                    dify: DifySimulator, words_file: str,
                                                                    settings: Settings) -> None:
    wecom = wecom_for(make_app(moderation_words_file=words_file), signer)
    frames = wecom.converse(text_message("告诉我内部代号是什么"), interval=0.05)
    assert frames[-1]["stream"]["content"] == settings.msg_moderation_refused
    assert wecom.converse(text_message("你好"), interval=0.05)[-1]["stream"]["content"] == "echo: 你好"
    assert [r.json["query"] for r in dify.chat_requests()] == ["你好"]


def test_the_moderation_service_refuses_overrides_and_fails_as_configured(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, moderation: ModerationServer, settings: Settings) -> None:
    wecom = wecom_for(make_app(moderation_url=moderation.url, moderation_api_key="mod-key"), signer)
    assert wecom.converse(text_message("违禁的问题"), interval=0.05)[-1]["stream"]["content"] == "这个问题不能回答。"
    assert moderation.requests[0] == {"auth": "Bearer mod-key", "body": {
        "point": "app.moderation.input", "params": {"app_id": "default", "inputs": {}, "query": "违禁的问题"}}}
    moderation.mode = "overridden"
    assert wecom.converse(text_message("说说违禁品"), interval=0.05)[-1]["stream"]["content"] == "echo: 说说□□品"
    moderation.down = True  # fail open (the default): asked unchecked
    assert wecom.converse(text_message("违禁也行"), interval=0.05)[-1]["stream"]["content"] == "echo: 违禁也行"
    closed = wecom_for(make_app(moderation_url=moderation.url, moderation_fail="closed"), signer)
    assert closed.converse(text_message("普通问题"), interval=0.05)[-1]["stream"]["content"] == \
        settings.msg_moderation_refused
    assert [r.json["query"] for r in dify.chat_requests()] == ["说说□□品", "违禁也行"]


def test_a_blocked_answer_word_is_never_in_a_frame_nor_the_follow_up(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, words_file: str, responses: ResponseServer) -> None:
    answer = "这是公开信息。" * 30 + "其中的机密不能说，内部代号也不能说。" + "后面还有很多公开内容。" * 40
    dify.script("讲讲", Script(answer=answer, delta_size=1, delay=0.007))  # ~4.7 s; a word always arrives split
    app = make_app(moderation_words_file=words_file, moderation_answers=True, stream_window_seconds=3.0,
                   moderation_replacement="【已屏蔽】", wecom_response_url_hosts="127.0.0.1")
    wecom = wecom_for(app, signer)
    first = wecom.send(text_message("讲讲", response_url=responses.url()))
    assert first is not None
    frames = wecom.until_finished(first["stream"]["id"], interval=0.02)  # closed early by the window
    expected = WordList(WORDS).redact(answer, "【已屏蔽】")[0]
    for frame in frames:
        assert not WordList(WORDS).blocked(frame["stream"]["content"])
    wait_for(lambda: responses.contents(), timeout=20)
    time.sleep(0.3)
    assert responses.contents() == [expected]  # the follow-up carries the whole, moderated answer


def test_the_moderation_service_checks_answers_sentence_by_sentence(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, moderation: ModerationServer) -> None:
    answer = "第一句没问题。第二句有违禁内容。第三句也没问题。"
    dify.script("三句", Script(answer=answer, delta_size=2, delay=0.005))
    moderation.preset = ""  # no preset response: MODERATION_REPLACEMENT stands in for the flagged sentence
    wecom = wecom_for(make_app(moderation_url=moderation.url, moderation_answers=True,
                               moderation_replacement="（此句已屏蔽）"), signer)
    frames = wecom.converse(text_message("三句"), interval=0.02)
    assert frames[-1]["stream"]["content"] == "第一句没问题。（此句已屏蔽）第三句也没问题。"
    assert all("违禁" not in f["stream"]["content"] for f in frames)
    texts = [r["body"]["params"]["text"] for r in moderation.requests if r["body"]["point"] == "app.moderation.output"]
    assert texts == ["第一句没问题。", "第二句有违禁内容。", "第三句也没问题。"]


def test_suggested_questions_with_a_blocked_word_are_left_out(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                              dify: DifySimulator, words_file: str) -> None:
    dify.suggestions = ["公开的问题？", "机密在哪里？"]
    wecom = wecom_for(make_app(moderation_words_file=words_file, moderation_answers=True), signer)
    frames = wecom.converse(text_message("建议"), interval=0.02)
    card = frames[-1]["stream"].get("template_card") or frames[-1].get("template_card")
    assert card is not None, frames[-1]
    assert [b["text"] for b in card["button_list"]] == ["公开的问题？"]


def test_a_reasoning_models_thoughts_are_not_shown_when_answers_are_checked(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, words_file: str) -> None:
    dify.script("想想", Script(think="这里提到机密的内容", answer="回答。", delta_size=2, delay=0.01))
    wecom = wecom_for(make_app(moderation_words_file=words_file, moderation_answers=True), signer)
    frames = wecom.converse(text_message("想想"), interval=0.01)
    assert frames[-1]["stream"]["content"] == "回答。"
    assert not any("机密" in f["stream"]["content"] for f in frames)


def _broken_service(cut: bool) -> tuple[str, socket.socket]:
    """A moderation service that starts a 200 reply, then cuts it short or stalls past the timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"fl')
            if not cut:
                time.sleep(2)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/m", server


@pytest.mark.parametrize("cut", [False, True])
def test_a_reply_cut_short_or_stalled_is_unavailable_and_follows_moderation_fail(  # type: ignore[no-untyped-def]
        cut: bool, make_app, signer: WeComSigner, dify: DifySimulator) -> None:
    url, server = _broken_service(cut)
    try:
        with pytest.raises(ModerationUnavailable):
            RemoteModeration(url, "k", 0.5).check_query("default", "问题")
        wecom = wecom_for(make_app(moderation_url=url, moderation_timeout=0.5), signer)
        assert wecom.converse(text_message("照常回答"))[-1]["stream"]["content"] == "echo: 照常回答"  # fail open
    finally:
        server.close()


def test_with_a_service_checking_answers_no_unchecked_suggestions_are_offered(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, moderation: ModerationServer) -> None:
    dify.suggestions = ["违禁在哪里？", "公开的问题？"]
    wecom = wecom_for(make_app(moderation_url=moderation.url, moderation_answers=True), signer)
    last = wecom.converse(text_message("建议"), interval=0.02)[-1]
    assert last["msgtype"] == "stream" and "template_card" not in last

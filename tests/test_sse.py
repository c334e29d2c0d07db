"""SSE parser on bytes (frame splitting, UTF-8 across reads, separators, limits, errors) and the event decoder."""

from __future__ import annotations

import json

import pytest

from services.dify.events import (
    MAX_ANSWER_FILES,
    AnswerFile,
    ChatEventDecoder,
    ConversationDropped,
    Delta,
    Finished,
    Replace,
    Started,
)
from services.dify.sse import SSEDecodeError, SSEFrame, SSEFrameTooLarge, SSEIncompleteError, SSEParser
from services.errors import DifyStreamError

ANSWER = "你好！我是企业微信里的AI 助手 🤖。\u2028第二行\u2029第三段\u0085完"
FRAME = (
    "data: "
    + json.dumps({"event": "message", "answer": ANSWER}, ensure_ascii=False, separators=(",", ":"))
    + "\n\n"
).encode()
STREAM = b"event: ping\n\n" + FRAME + b": keep-alive comment\n\n" + FRAME


def parse_all(chunks: list[bytes], parser: SSEParser | None = None) -> list[SSEFrame]:
    parser = parser or SSEParser()
    frames: list[SSEFrame] = []
    for chunk in chunks:
        frames.extend(parser.feed(chunk))
    parser.close()
    return frames


def expected() -> list[SSEFrame]:
    data = FRAME[len(b"data: ") : -2].decode()
    return [SSEFrame("ping", None), SSEFrame(None, data), SSEFrame(None, data)]


def test_whole_stream_in_one_feed() -> None:
    frames = parse_all([STREAM])
    assert frames == expected()
    assert json.loads(frames[1].data or "")["answer"] == ANSWER


@pytest.mark.parametrize("offset", range(1, len(STREAM)))
def test_split_at_every_byte_offset(offset: int) -> None:
    assert parse_all([STREAM[:offset], STREAM[offset:]]) == expected()


def test_byte_by_byte() -> None:
    parser = SSEParser()
    frames = []
    for i in range(len(STREAM)):
        frames.extend(parser.feed(STREAM[i : i + 1]))
        assert parser.pending == (not STREAM[: i + 1].endswith(b"\n\n"))
    assert frames == expected()


def test_raw_line_separators_stay_inside_the_data() -> None:
    (frame,) = parse_all([FRAME])
    assert (
        "\u2028" in (frame.data or "") and "\u2029" in (frame.data or "") and "\u0085" in (frame.data or "")
    )
    assert json.loads(frame.data or "")["answer"] == ANSWER


def test_crlf_and_mixed_line_endings() -> None:
    raw = b'event: ping\r\n\r\ndata: {"a":1}\r\n\r\nevent: x\ndata: y\r\n\n'
    assert parse_all([raw]) == [SSEFrame("ping", None), SSEFrame(None, '{"a":1}'), SSEFrame("x", "y")]


def test_fields_multiline_data_spaces_and_comments() -> None:
    raw = b": comment only\n\nevent:message\ndata:a\ndata:  b\ndata\nid: 7\nretry: 10\n: inside\n\n"
    assert parse_all([raw]) == [SSEFrame("message", "a\n b\n")]


def test_leading_bom_is_ignored_even_when_split() -> None:
    raw = b"\xef\xbb\xbf" + FRAME
    assert parse_all([raw[:1], raw[1:2], raw[2:]]) == [expected()[1]]


def test_many_frames_per_feed_and_empty_feeds() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    frames = parser.feed(FRAME * 50)
    assert len(frames) == 50 and not parser.pending


def test_oversize_frame_raises_typed_error() -> None:
    parser = SSEParser(max_frame_bytes=1024)
    parser.feed(b"data: " + b"x" * 1000)
    with pytest.raises(SSEFrameTooLarge):
        parser.feed(b"x" * 100)


def test_oversize_frame_split_over_many_lines() -> None:
    parser = SSEParser(max_frame_bytes=1024)
    with pytest.raises(SSEFrameTooLarge):
        for _ in range(100):
            parser.feed(b"data: " + b"y" * 20 + b"\n")


def test_large_frame_under_the_limit_is_fine() -> None:
    big = b"data: " + ("资" * 1_000_000).encode() + b"\n\n"  # 3 MB, like a node_finished frame
    parser = SSEParser()
    frames = []
    for i in range(0, len(big), 65536):
        frames.extend(parser.feed(big[i : i + 65536]))
    assert len(frames) == 1 and len(frames[0].data or "") == 1_000_000


def test_invalid_utf8_raises_typed_error() -> None:
    with pytest.raises(SSEDecodeError):
        SSEParser().feed(b"data: \xff\xfe\n\n")


def test_truncated_multibyte_char_inside_a_complete_frame() -> None:
    with pytest.raises(SSEDecodeError):
        SSEParser().feed("data: 你".encode()[:-1] + b"\n\n")


def test_eof_mid_frame_is_detectable() -> None:
    parser = SSEParser()
    parser.feed(FRAME + FRAME[:10])
    assert parser.pending
    with pytest.raises(SSEIncompleteError):
        parser.close()


def test_eof_after_data_line_without_blank_line_is_incomplete() -> None:
    parser = SSEParser()
    assert parser.feed(FRAME[:-1]) == []
    assert parser.pending
    with pytest.raises(SSEIncompleteError):
        parser.close()


def test_clean_eof() -> None:
    parser = SSEParser()
    parser.feed(STREAM)
    assert not parser.pending
    parser.close()


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        SSEParser(max_frame_bytes=0)


# -- ChatEventDecoder: JSON of data frames → events ------------------------------------------------

IDS = {"conversation_id": "c1", "message_id": "m1", "created_at": 1, "task_id": "t1"}


def data(event: str, **fields: object) -> str:
    return json.dumps({"event": event, **IDS, **fields})


def test_decoder_started_once_then_deltas() -> None:
    dec = ChatEventDecoder()
    assert dec.handle(data("message", answer="a")) == [Started("c1", "m1", "t1"), Delta("a")]
    assert dec.handle(data("message", answer="")) == []
    assert dec.handle(data("message_replace", answer="X", reason="")) == [Replace("X")]
    assert dec.handle(data("message", answer="b")) == [Delta("b")]
    assert dec.text == "Xb"
    assert dec.handle(data("message_end", metadata={})) == [Finished("c1")]


def test_decoder_error_frame_without_task_id() -> None:
    frame = json.dumps(
        {
            "event": "error",
            "conversation_id": "c",
            "message_id": "m",
            "created_at": 1,
            "code": "invalid_param",
            "status": 400,
            "message": "bad",
        }
    )
    dec = ChatEventDecoder()
    with pytest.raises(DifyStreamError) as err:
        dec.handle(frame)
    assert (err.value.code, err.value.message, err.value.status) == ("invalid_param", "bad", 400)
    assert not dec.started


@pytest.mark.parametrize("status", ["failed", "stopped"])
def test_decoder_workflow_failure(status: str) -> None:
    dec = ChatEventDecoder()
    dec.handle(data("workflow_started", workflow_run_id="r", data={}))
    with pytest.raises(DifyStreamError) as err:
        dec.handle(data("workflow_finished", workflow_run_id="r", data={"status": status, "error": "boom"}))
    assert err.value.code == f"workflow_{status}" and err.value.message == "boom"


def test_decoder_workflow_partial_success_and_message_end_waits() -> None:
    dec = ChatEventDecoder()
    dec.handle(data("workflow_started", workflow_run_id="r", data={}))
    assert dec.handle(data("message_end", metadata={})) == []
    assert dec.message_ended
    finished = dec.handle(
        data("workflow_finished", workflow_run_id="r", data={"status": "partial-succeeded"})
    )
    assert finished == [Finished("c1")]


def test_decoder_new_agent_closing_message_not_doubled() -> None:
    dec = ChatEventDecoder()
    events = [e for f in ("ab", "cd") for e in dec.handle(data("agent_message", answer=f))]
    assert dec.handle(data("message", answer="abcd")) == []
    assert [e for e in events if isinstance(e, Delta)] == [Delta("ab"), Delta("cd")]


def test_decoder_message_file_quirk_and_real_file() -> None:
    dec = ChatEventDecoder()
    dec.handle(data("message", answer=""))
    assert dec.handle(data("message_file", id="f", type="image", belongs_to="assistant", url="u")) == [
        AnswerFile(url="u", type="image")
    ]
    assert dec.handle(data("message_file", id="m1", answer="hi", from_variable_selector=None)) == [
        Delta("hi")
    ]


def tool_file(related: str, **more: object) -> dict[str, object]:
    """A Chatflow file record as Dify's ``File.to_dict()`` writes it."""
    return {"dify_model_identity": "__dify__file__", "id": None, "type": "image", "transfer_method": "tool_file",
            "remote_url": None, "related_id": related, "filename": f"{related}.png", "extension": ".png",
            "mime_type": "image/png", "size": 10, "url": f"/files/tools/{related}.png?timestamp=1&nonce=n&sign=s",
            **more}


def test_decoder_chatflow_files_once_each_in_order_before_finished() -> None:
    dec = ChatEventDecoder()
    dec.handle(data("workflow_started", workflow_run_id="r", data={}))
    a, b = tool_file("a"), tool_file("b", type="document", mime_type="application/pdf", filename="r.pdf")
    ended = dec.handle(data("message_end", id="m", metadata={}, files=[a, "junk", {"url": 3}, b]))
    assert ended == [AnswerFile(url=str(a["url"]), type="image", name="a.png", mime="image/png", source="a"),
                     AnswerFile(url=str(b["url"]), type="document", name="r.pdf", mime="application/pdf",
                                source="b")]
    # the workflow's outputs name the same files again (with new signatures): not twice
    again = dec.handle(data("workflow_finished", workflow_run_id="r",
                            data={"status": "succeeded", "files": [tool_file("a", url="/files/tools/a.png?x=2"),
                                                                   tool_file("c")]}))
    assert [type(e) for e in again] == [AnswerFile, Finished]
    assert isinstance(again[0], AnswerFile) and again[0].source == "c"


def test_decoder_skips_the_users_files_and_bounds_how_many() -> None:
    dec = ChatEventDecoder()
    dec.handle(data("message", answer=""))
    assert dec.handle(data("message_file", id="u", type="image", belongs_to="user", url="/x.png")) == []
    many = [tool_file(str(n)) for n in range(MAX_ANSWER_FILES + 5)]
    files = [e for e in dec.handle(data("message_end", id="m", metadata={}, files=many)) if isinstance(e, AnswerFile)]
    assert len(files) == MAX_ANSWER_FILES
    assert dec.handle(data("message_end", id="m", metadata={}, files=None)) == [Finished("c1")]


@pytest.mark.parametrize("payload", ["not json", "[1, 2]"])
def test_decoder_rejects_non_object(payload: str) -> None:
    with pytest.raises(DifyStreamError):
        ChatEventDecoder().handle(payload)


def test_event_types_are_values() -> None:
    assert ConversationDropped() == ConversationDropped()
    assert Delta("x") != Replace("x")  # type: ignore[comparison-overlap]

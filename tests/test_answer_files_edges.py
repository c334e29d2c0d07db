"""Edges of answer files, follow-ups, token renewal and upload retries that a mutation-testing pass found unguarded."""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from services.dify import AnswerFile, Finished
from services.dify.events import ChatEventDecoder
from services.engine import answer as answer_mod
from services.errors import DifyHTTPError
from services.media import reply as reply_mod
from tests.auth_server import AuthServer
from tests.conftest import AES_KEY
from tests.helpers import InProcessWeCom, contents, message, wait_for
from tests.media_server import MediaServer
from tests.response_server import ResponseServer
from tests.servers import RedisServer
from tests.test_answer_files import PNG, files_of, last_frame, wecom  # noqa: F401
from tests.test_auth import auth_server, auth_settings, seed_cache, users  # noqa: F401
from tests.test_dify_client import loop_thread, make_client, run, sleeps  # noqa: F401
from tests.test_hardening import build
from tests.test_sse import data
from tools.dify_files import ToolFile
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message


def linked(text: str, content: str, ext: str = "png") -> bool:
    """True when ``content`` is ``text`` then one link to a Dify tool file (an image's markdown image link)."""
    mark = "!" if ext == "png" else ""
    tail = rf"{mark}\[[0-9a-f-]{{36}}\.{ext}\]\(http://127\.0\.0\.1:\d+/files/tools/\S+\)"
    return re.fullmatch(re.escape(text) + (r"\n\n" if text else "") + tail, content) is not None


def published(dify: DifySimulator, n: int) -> list[AnswerFile]:
    """``n`` PNG tool files Dify serves, as the answer names them (signed, relative URLs)."""
    return [AnswerFile(url=str(dify.tool_files.publish(ToolFile(PNG, name=f"p{i}.png"))["url"]), type="image")
            for i in range(n)]


def port_of(media: MediaServer) -> str:
    return media.url("/").split(":")[2].split("/")[0]


# -- DifyFiles: bounds and URLs ----------------------------------------------------------------------

def test_the_budget_counts_every_inline_image(dify: DifySimulator) -> None:
    reply = files_of(dify.url, budget=len(PNG) * 3 // 2).prepare(published(dify, 2))
    assert len(reply.images) == 1 and reply.text.startswith("![")  # the second no longer fits


def test_one_image_is_at_most_image_max_bytes(dify: DifySimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reply_mod, "IMAGE_MAX_BYTES", len(PNG) - 1)
    reply = files_of(dify.url, budget=1 << 20).prepare(published(dify, 1))
    assert reply.images == [] and reply.text.startswith("![")


def test_a_later_download_gets_only_the_time_left() -> None:
    media = MediaServer(AES_KEY)  # /slow trickles 16 bytes every 0.2 s
    try:
        files = files_of(hosts=(f"127.0.0.1:{port_of(media)}",), budget=80, timeout=1.3)
        started = time.monotonic()
        reply = files.prepare([AnswerFile(url=media.url("/slow"), type="image", name=name)
                               for name in ("big", "late", "later")])
        elapsed = time.monotonic() - started
        lines = reply.text.split("\n")
        assert lines[0].startswith("![big](")  # over the 80 bytes after ~1 s: linked
        assert lines[1].startswith("failed: [late](")  # cut off at the shared deadline, not 1.3 s after its start
        assert lines[2].startswith("![later](") and len(media.requests) == 2  # no time left: linked unasked
        assert elapsed < 1.7
    finally:
        media.close()


def test_long_file_names_are_cut_to_100_characters() -> None:
    reply = files_of().prepare([AnswerFile(url="/files/x.pdf", type="document", name="a" * 300)])
    assert reply.text.startswith("[" + "a" * 100 + "](")


def test_dify_origin_needs_the_same_scheme() -> None:
    assert not files_of("https://dify.example.com/v1").allowed("http://dify.example.com:443/files/x.png")


def test_a_host_the_parsers_read_differently_is_refused() -> None:
    # urlsplit reads the host "evil%2ecom.cdn.example", urllib3 (which connects) "evil.com.cdn.example"
    assert not files_of("https://dify.example.com/v1", hosts=("*.cdn.example",)).allowed(
        "https://evil%2ecom.cdn.example/x.png")


# -- the decoder ---------------------------------------------------------------------------------------

def test_a_chat_apps_message_end_files_come_before_finished() -> None:
    decoder = ChatEventDecoder()
    decoder.handle(data("message", answer="a"))
    out = decoder.handle(data("message_end", id="m", metadata={},
                              files=[{"id": "f", "type": "image", "url": "/files/a.png"}]))
    assert [type(e) for e in out] == [AnswerFile, Finished]


def test_a_file_without_id_is_known_by_its_path_not_its_signature() -> None:
    decoder = ChatEventDecoder()
    decoder.handle(data("workflow_started", workflow_run_id="r", data={}))
    out = decoder.handle(data("message_end", id="m", metadata={}, files=[
        {"type": "image", "url": "/files/a.png?sign=1"}, {"type": "image", "url": "/files/a.png?sign=2"}]))
    assert out == [AnswerFile(url="/files/a.png?sign=1", type="image")]


# -- answers end to end ----------------------------------------------------------------------------------

def test_a_files_only_answer_starts_with_its_file(wecom: InProcessWeCom, dify: DifySimulator) -> None:  # noqa: F811
    dify.script("doc", Script(answer="", files=(ToolFile(b"%PDF-1.7\n", type="document", name="r.pdf",
                                                         mime="application/pdf"),)))
    assert linked("", last_frame(wecom, text_message("doc"))["content"], "pdf")


def test_images_redis_refused_to_keep_come_as_links(settings: Settings, signer: WeComSigner, dify: DifySimulator,
                                                    redis_server: RedisServer, apps: list[Flask]) -> None:
    dify.script("img", Script(answer="好。", stall=1.0, files=(ToolFile(PNG, name="cat.png"),)))
    chat = InProcessWeCom(build(apps, settings, redis_url=redis_server.url).test_client(), signer)
    first = chat.send(text_message("img"))
    assert first is not None
    admin = redis.Redis.from_url(redis_server.url)
    try:
        time.sleep(0.3)
        admin.config_set("maxmemory", "1")  # Redis refuses writes (OOM) while the answer ends
        wait_for(lambda: dify.tool_files.fetches != [], timeout=5)
        time.sleep(1.0)  # every try to keep the images fails
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
    stream = chat.until_finished(first["stream"]["id"])[-1]["stream"]
    assert "msg_item" not in stream and linked("好。", stream["content"])


def test_a_frame_closed_by_the_window_never_gains_images(make_app: Any, signer: WeComSigner,  # noqa: F811
                                                         dify: DifySimulator, redis_client: redis.Redis) -> None:
    dify.script("slow", Script(answer="慢" * 40, delta_size=2, delay=0.2, files=(ToolFile(PNG, name="late.png"),)))
    app = make_app(stream_window_seconds=3.0)
    chat = InProcessWeCom(app.test_client(), signer)
    first = chat.send(text_message("slow"))
    assert first is not None
    sid = first["stream"]["id"]
    closing = chat.until_finished(sid)[-1]["stream"]  # the window closes it at 3 s, before the answer ends
    assert "msg_item" not in closing and closing["content"] != "慢" * 40
    meta = app.extensions["wecom_dify"].bots["default"].store.keys.stream_meta(sid)
    wait_for(lambda: redis_client.hget(meta, "status") == b"done", timeout=10)
    again = chat.poll(sid)["stream"]
    assert again == closing


def test_no_images_are_downloaded_while_draining(make_app: Any, signer: WeComSigner,  # noqa: F811
                                                 dify: DifySimulator) -> None:
    dify.script("slow", Script(answer="慢" * 10, delta_size=2, delay=0.2, files=(ToolFile(PNG, name="p.png"),)))
    app = make_app()
    chat = InProcessWeCom(app.test_client(), signer)
    first = chat.send(text_message("slow"))
    assert first is not None
    chat.until_text(first["stream"]["id"])
    app.extensions["wecom_dify"].engine.begin_shutdown()
    stream = chat.until_finished(first["stream"]["id"])[-1]["stream"]
    assert dify.tool_files.fetches == [] and "msg_item" not in stream
    assert linked("慢" * 10, stream["content"])


def test_a_queued_job_reading_its_media_leaves_the_active_answer_alone(
        make_app: Any, signer: WeComSigner, dify: DifySimulator, redis_client: redis.Redis) -> None:  # noqa: F811
    media = MediaServer(AES_KEY)
    try:
        dify.script("long", Script(answer="x" * 40, delta_size=2, delay=0.1))  # ~2 s
        app = make_app(wecom_media_hosts="127.0.0.1", media_timeout=2.0)
        chat = InProcessWeCom(app.test_client(), signer)
        first = chat.send(text_message("long"))
        assert first is not None
        chat.until_text(first["stream"]["id"])
        second = chat.send(message("image", {"url": media.url("/slow")}))  # behind it; its download trickles
        assert second is not None
        wait_for(lambda: media.requests != [], timeout=5)
        time.sleep(0.2)
        active = app.extensions["wecom_dify"].bots["default"].store.keys.active("u:zhangsan")
        assert redis_client.get(active) == first["stream"]["id"].encode()  # /stop still reaches the running one
    finally:
        media.close()


# -- follow-ups through response_url carry the images as links -------------------------------------------

def test_a_busy_poll_follow_up_carries_the_image_links(settings: Settings, signer: WeComSigner, dify: DifySimulator,
                                                       redis_server: RedisServer, apps: list[Flask]) -> None:
    from tests.test_engine import two_apps

    dify.script("quiet", Script(answer="完整回答", stall=2.0, files=(ToolFile(PNG, name="p.png"),)))
    a, b = two_apps(settings, apps, redis_url=redis_server.url, producer_lease_seconds=60.0)
    b.extensions["wecom_dify"].engine.start()
    responses = ResponseServer()
    try:
        first = InProcessWeCom(a.test_client(), signer).send(text_message("quiet", response_url=responses.url()))
        assert first is not None
        time.sleep(0.5)
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:  # WeCom's poll lands on replica B while Redis is away: "busy" ends the stream for the user
            frame = InProcessWeCom(b.test_client(), signer).poll(first["stream"]["id"])["stream"]
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert frame["finish"] and frame["content"] == settings.msg_busy
        wait_for(lambda: responses.contents(), timeout=10)
        [sent] = responses.contents()
        assert linked("完整回答", sent)
    finally:
        responses.close()


def test_a_follow_up_after_redis_trouble_carries_the_image_links(
        settings: Settings, signer: WeComSigner, dify: DifySimulator, redis_server: RedisServer, apps: list[Flask],
        responses: ResponseServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer_mod, "SEEN_GRACE", 0.5)
    answer = "回" * 125  # ~2.5 s
    dify.script("blip", Script(answer=answer, delta_size=5, delay=0.1, files=(ToolFile(PNG, name="p.png"),)))
    chat = InProcessWeCom(build(apps, settings, redis_url=redis_server.url).test_client(), signer)
    first = chat.send(text_message("blip", response_url=responses.url()))  # never polled again
    assert first is not None
    time.sleep(0.3)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # the answer's writes fail for a second
    time.sleep(1.0)
    redis_server.proc.send_signal(signal.SIGCONT)  # back before the answer ends: its images are kept
    wait_for(lambda: responses.contents(), timeout=10)
    [rest] = responses.contents()
    assert linked(answer, rest)


# -- user tokens Dify keeps refusing ------------------------------------------------------------------------

def test_a_chat_token_refused_twice_fails_after_one_renewal(
        auth_settings: Settings, redis_client: redis.Redis, signer: WeComSigner,  # noqa: F811
        auth_server: AuthServer) -> None:  # noqa: F811
    with DifySimulator(api_keys={"never"}) as gateway:  # refuses the fresh token too
        app = create_app(auth_settings.replace(dify_auth_source="user_token", dify_base_url=gateway.url))
        seed_cache(redis_client, "zhangsan", "revoked-token", {"name": "张三"})
        chat = InProcessWeCom(app.test_client(), signer)
        first = chat.send(text_message("hi", userid="zhangsan"))
        assert first is not None
        last = contents(chat.until_finished(first["stream"]["id"]))[-1]
        app.extensions["wecom_dify"].engine.drain(5)
        assert last == auth_settings.msg_dify_failed and len(gateway.chat_requests()) == 2
    assert len(auth_server.calls) == 1


def test_an_upload_token_refused_twice_is_renewed_once(
        auth_settings: Settings, redis_client: redis.Redis, signer: WeComSigner,  # noqa: F811
        auth_server: AuthServer) -> None:  # noqa: F811
    media = MediaServer(AES_KEY)
    try:
        with DifySimulator(api_keys={"never"}) as gateway:
            app = create_app(auth_settings.replace(dify_auth_source="user_token", dify_base_url=gateway.url,
                                                   wecom_media_hosts="127.0.0.1"))
            seed_cache(redis_client, "zhangsan", "revoked-token", {"name": "张三"})
            chat = InProcessWeCom(app.test_client(), signer)
            first = chat.send(message("image", {"url": media.add("p", PNG)}))
            assert first is not None
            last = contents(chat.until_finished(first["stream"]["id"]))[-1]
            app.extensions["wecom_dify"].engine.drain(5)
            assert len([r for r in gateway.requests if r.path == "/v1/files/upload"]) == 2
            assert last and gateway.chat_requests() == []
    finally:
        media.close()
    assert len(auth_server.calls) == 1


# -- DifyClient upload retries --------------------------------------------------------------------------------

def test_upload_retries_stop_at_max_retries(dify: DifySimulator, make_client: Any, run: Any) -> None:  # noqa: F811
    dify.upload_errors = [503] * 3
    with pytest.raises(DifyHTTPError):
        run(make_client(max_retries=2).upload(PNG, filename="p.png", mime="image/png", user="u"))
    assert len([r for r in dify.requests if r.path == "/v1/files/upload"]) == 3


def test_upload_retries_stop_at_the_total_deadline(dify: DifySimulator, make_client: Any,  # noqa: F811
                                                   run: Any) -> None:  # noqa: F811
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    dify.upload_errors = [503] * 5
    client = make_client(max_retries=10, backoff_base=2.0, total_timeout=5.0, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(DifyHTTPError):
        run(client.upload(PNG, filename="p.png", mime="image/png", user="u"))
    assert now[0] == 2.0  # one backoff: the next (4 s) would end past the 5 s deadline
    assert len([r for r in dify.requests if r.path == "/v1/files/upload"]) == 2

"""Images, files and videos from WeCom to Dify, end to end: a real media server with encrypted files,
the Dify simulator with /parameters and /files/upload, and the bridge in between."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from services import metrics
from tests.conftest import AES_KEY
from tests.helpers import InProcessWeCom, contents, message, wait_for
from tests.media_server import MediaServer
from tools.dify_sim import DifySimulator
from tools.wecom_client import WeComSigner

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
JPG = b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x01" * 500
PDF = b"%PDF-1.7\n" + b"%" * 700


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer(AES_KEY)
    yield server
    server.close()


@pytest.fixture
def app(settings: Settings, redis_client: redis.Redis) -> Iterator[Flask]:
    application = create_app(settings.replace(wecom_media_hosts="127.0.0.1", media_max_bytes=64 * 1024))
    yield application
    application.extensions["wecom_dify"].engine.drain(5)


@pytest.fixture
def wecom(app: Flask, signer: WeComSigner) -> InProcessWeCom:
    return InProcessWeCom(app.test_client(), signer)


def ask(wecom: InProcessWeCom, payload: dict[str, Any]) -> str:
    first = wecom.send(payload)
    assert first is not None and first["stream"]["finish"] is False  # the callback only starts the work
    return contents(wecom.until_finished(first["stream"]["id"]))[-1]


def uploads_of(dify: DifySimulator, chat: Any) -> list[bytes]:
    return [dify.uploads[f["upload_file_id"]].data for f in chat.json.get("files", [])]


def test_an_image_reaches_dify_as_a_file_of_the_same_user(wecom: InProcessWeCom, media: MediaServer,
                                                          dify: DifySimulator, settings: Settings) -> None:
    assert ask(wecom, message("image", {"url": media.add("a", PNG)})) == f"echo: {settings.media_query}"
    [chat] = dify.chat_requests()
    assert chat.json["query"] == settings.media_query  # Dify needs a question with the file
    assert [f["type"] for f in chat.json["files"]] == ["image"] and uploads_of(dify, chat) == [PNG]
    [upload] = dify.uploads.values()
    assert upload.user == chat.json["user"] == "wecom:zhangsan" and upload.mime == "image/png"


def test_three_images_of_a_mixed_message_arrive_in_order(wecom: InProcessWeCom, media: MediaServer,
                                                         dify: DifySimulator) -> None:
    images = [PNG, JPG, PNG[:300] + b"!"]
    items = [{"msgtype": "text", "text": {"content": "比较这三张图"}}] + [
        {"msgtype": "image", "image": {"url": media.add(f"i{n}", data)}} for n, data in enumerate(images)]
    ask(wecom, message("mixed", {"msg_item": items}))
    [chat] = dify.chat_requests()
    assert chat.json["query"] == "比较这三张图" and uploads_of(dify, chat) == images


def test_a_quoted_image_goes_along_as_a_file(wecom: InProcessWeCom, media: MediaServer, dify: DifySimulator) -> None:
    quote = {"msgtype": "image", "image": {"url": media.add("q", JPG)}}
    ask(wecom, message("text", {"content": "这张图里有几个人？"}, quote=quote))
    [chat] = dify.chat_requests()
    assert chat.json["query"] == "「[图片]」\n这张图里有几个人？" and uploads_of(dify, chat) == [JPG]


def test_a_document_goes_as_a_document(wecom: InProcessWeCom, media: MediaServer, dify: DifySimulator) -> None:
    ask(wecom, message("file", {"url": media.add("f", PDF)}))
    [chat] = dify.chat_requests()
    assert chat.json["files"][0]["type"] == "document" and uploads_of(dify, chat) == [PDF]


def test_an_app_without_image_upload_is_never_sent_one(wecom: InProcessWeCom, media: MediaServer,
                                                       dify: DifySimulator, settings: Settings) -> None:
    dify.file_upload = {"enabled": False, "image": {"enabled": False}}
    before = metrics.MEDIA.labels("default", "not_accepted")._value.get()
    assert ask(wecom, message("image", {"url": media.add("a", PNG)})) == settings.msg_media_not_accepted
    assert [r.path for r in dify.requests if r.method == "POST"] == []  # no upload, no chat
    assert media.requests == []  # an image message is known to be an image: not even downloaded
    assert metrics.MEDIA.labels("default", "not_accepted")._value.get() == before + 1


def test_the_apps_limits_are_named_to_the_user(wecom: InProcessWeCom, media: MediaServer,
                                               dify: DifySimulator) -> None:
    dify.file_upload = {**dify.file_upload, "number_limits": 2}
    items = [{"msgtype": "image", "image": {"url": media.add(f"n{n}", PNG)}} for n in range(3)]
    assert ask(wecom, message("mixed", {"msg_item": items})) == "一次最多发 2 个文件。"
    assert dify.uploads == {} and dify.chat_requests() == [] and media.requests == []  # refused before downloading


def test_an_expired_quoted_image_does_not_sink_the_question(wecom: InProcessWeCom, media: MediaServer,
                                                            dify: DifySimulator) -> None:
    quote = {"msgtype": "image", "image": {"url": media.add("stale", JPG, ttl=-1)}}  # quoted after 5 minutes
    assert ask(wecom, message("text", {"content": "图里是谁？"}, quote=quote)) == "echo: 「[图片]」\n图里是谁？"
    [chat] = dify.chat_requests()
    assert "files" not in chat.json and dify.uploads == {}


@pytest.mark.parametrize(("setup", "text_field"), [
    (lambda m: m.add("old", PNG, ttl=-1), "msg_media_expired"),  # WeCom's URL expired (5 minutes)
    (lambda m: m.url("/forbidden"), "msg_media_expired"),
    (lambda m: m.add("big", PNG * 40), "msg_media_too_large"),  # over MEDIA_MAX_BYTES: cut off
    (lambda m: m.add("junk", b"x" * 64, raw=True), "msg_media_failed"),  # does not decrypt
    (lambda m: "https://elsewhere.example/a.png", "msg_media_failed"),  # not an allowed host
])
def test_media_that_cannot_be_read_gets_a_clear_answer(wecom: InProcessWeCom, media: MediaServer,
                                                       dify: DifySimulator, settings: Settings, setup: Any,
                                                       text_field: str) -> None:
    assert ask(wecom, message("image", {"url": setup(media)})) == getattr(settings, text_field).replace("{limit}", "1")
    assert dify.chat_requests() == [] and dify.uploads == {}


def test_the_apps_parameters_are_asked_once_and_cached(wecom: InProcessWeCom, media: MediaServer,
                                                       dify: DifySimulator, redis_client: redis.Redis) -> None:
    for n in range(3):
        ask(wecom, message("image", {"url": media.add(f"c{n}", PNG)}))
    assert [r.path for r in dify.requests if r.method == "GET"] == ["/v1/parameters"]
    assert 0 < redis_client.ttl("wecomdify:dify:parameters") <= 300


def test_a_slow_download_shows_a_note_and_a_drain_interrupts_it(settings: Settings, redis_client: redis.Redis,
                                                                 signer: WeComSigner, media: MediaServer) -> None:
    app = create_app(settings.replace(wecom_media_hosts="127.0.0.1", media_timeout=30.0,
                                      queued_note_after_seconds=0.2))
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(message("image", {"url": media.url("/slow")}))  # trickles 16 bytes every 0.2 s
    assert first is not None
    sid = first["stream"]["id"]
    wait_for(lambda: wecom.poll(sid)["stream"]["content"] == settings.msg_attaching, timeout=5)
    started = time.monotonic()
    app.extensions["wecom_dify"].engine.drain(1.0)  # a rolling update: the download is not waited for
    assert time.monotonic() - started < 10
    assert wecom.poll(sid)["stream"] == {"id": sid, "finish": True, "content": settings.msg_interrupted}


def test_stop_while_the_files_are_read_stops_the_answer(settings: Settings, redis_client: redis.Redis,
                                                        signer: WeComSigner, media: MediaServer,
                                                        dify: DifySimulator, apps: list[Flask]) -> None:
    apps.append(app := create_app(settings.replace(wecom_media_hosts="127.0.0.1", media_timeout=30.0)))
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(message("image", {"url": media.url("/slow")}))  # trickles 16 bytes every 0.2 s
    assert first is not None
    sid = first["stream"]["id"]
    wait_for(lambda: wecom.poll(sid)["stream"]["content"] == settings.msg_attaching, timeout=5)
    ack = wecom.send(message("text", {"content": "/stop"}))
    assert ack is not None and ack["stream"]["content"] == settings.msg_stop_ack
    started = time.monotonic()
    assert wecom.until_finished(sid, timeout=10)[-1]["stream"]["content"] == settings.msg_stopped
    wait_for(lambda: not app.extensions["wecom_dify"].engine.keeper.jobs(), timeout=5)  # let go, not waited for
    assert time.monotonic() - started < 5 and dify.chat_requests() == [] and dify.uploads == {}
    assert redis_client.get("wecomdify:active:u:zhangsan") is None

"""Downloading a message's media: allowlisted, bounded in size and time, decrypted, sniffed by its bytes."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator

import pytest

from services.media import (
    MediaExpired,
    MediaFetcher,
    MediaRefused,
    MediaTooLarge,
    MediaUnavailable,
    MediaUnreadable,
    sniff,
)
from tests.conftest import AES_KEY
from tests.media_server import MediaServer
from tests.servers import free_port

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer(AES_KEY)
    yield server
    server.close()


def fetcher(max_bytes: int = 1 << 20, timeout: float = 5.0) -> MediaFetcher:
    return MediaFetcher(["127.0.0.1"], max_bytes=max_bytes, timeout=timeout)


def test_an_image_is_downloaded_decrypted_and_recognised(media: MediaServer) -> None:
    got = fetcher().fetch(media.add("a", PNG), AES_KEY)
    assert got.data == PNG
    assert (got.kind.dify_type, got.kind.mime, got.kind.extension) == ("image", "image/png", "png")


def test_only_allowlisted_hosts_over_https_are_called(media: MediaServer) -> None:
    f = MediaFetcher(["qyapi.weixin.qq.com", "*.myqcloud.com", "files.example:8443"], max_bytes=1024, timeout=1)
    assert f.allowed("https://ww-aibot-img-1.cos.ap-guangzhou.myqcloud.com/x?sign=1")
    assert f.allowed("https://qyapi.weixin.qq.com/x") and f.allowed("https://files.example:8443/x")
    for url in ("http://qyapi.weixin.qq.com/x", "https://evil.example/x", "https://myqcloud.com.evil.example/x",
                "https://evilmyqcloud.com/x", "https://files.example/x", "ftp://qyapi.weixin.qq.com/x",
                "https://[::1/x", "not a url", "",
                # where urlsplit and the HTTP client disagree about the host (the client would go to evil.com)
                "https://evil.com\\@x.myqcloud.com/", "https://evil.com\\.myqcloud.com/",
                "https://evil.com:443\\@x.myqcloud.com/", "https://127.0.0.1:9\\@media.myqcloud.com/x",
                "https://user:pw@x.myqcloud.com/", "https://x.myqcloud.com@evil.com/", "https://x.myqcloud.com /",
                "https://x.myqcloud.com\t/", "https://x.myqcloud.com/\x00"):
        assert not f.allowed(url), url
    with pytest.raises(MediaRefused):
        MediaFetcher(["qyapi.weixin.qq.com"], max_bytes=1024, timeout=1).fetch(media.add("b", PNG), AES_KEY)
    assert media.requests == []  # refused before any request


@pytest.mark.parametrize("path", ["/forbidden", "/m/never-added"])
def test_an_expired_or_forbidden_url_says_so(media: MediaServer, path: str) -> None:
    with pytest.raises(MediaExpired):
        fetcher().fetch(media.url(path), AES_KEY)


def test_a_url_past_its_five_minutes_is_expired(media: MediaServer) -> None:
    url = media.add("old", PNG, ttl=-1)
    with pytest.raises(MediaExpired):
        fetcher().fetch(url, AES_KEY)


def test_an_oversized_download_is_cut_off_before_it_is_read(media: MediaServer) -> None:
    with pytest.raises(MediaTooLarge):
        fetcher(max_bytes=256 * 1024).fetch(media.url("/endless"), AES_KEY)
    time.sleep(0.3)
    assert media.sent < 16 * 1024 * 1024  # of an endless body: the cap, plus what the sockets buffered
    with pytest.raises(MediaTooLarge):
        fetcher(max_bytes=256 * 1024).fetch(media.url("/declared"), AES_KEY)  # 1 GB announced: not even started


def test_a_file_just_under_the_cap_passes(media: MediaServer) -> None:
    data = b"%PDF-1.7\n" + b"x" * (64 * 1024 - 9)
    assert fetcher(max_bytes=64 * 1024).fetch(media.add("pdf", data), AES_KEY).data == data
    with pytest.raises(MediaTooLarge):
        fetcher(max_bytes=64 * 1024 - 1).fetch(media.add("pdf2", data + b"y" * 64), AES_KEY)


def test_a_trickle_stops_at_the_total_deadline(media: MediaServer) -> None:
    started = time.monotonic()
    with pytest.raises(MediaUnavailable):
        fetcher(timeout=1.0).fetch(media.url("/slow"), AES_KEY)
    assert time.monotonic() - started < 2.5


def test_redirects_errors_and_dead_servers_are_unavailable(media: MediaServer) -> None:
    for path in ("/redirect", "/error"):
        with pytest.raises(MediaUnavailable):
            fetcher().fetch(media.url(path), AES_KEY)
    assert "/m/elsewhere" not in media.requests  # a redirect is never followed
    with pytest.raises(MediaUnavailable):
        fetcher().fetch(f"http://127.0.0.1:{free_port()}/m/x", AES_KEY)


def test_a_body_that_does_not_decrypt_is_unreadable(media: MediaServer) -> None:
    for name, body in (("plain", PNG[:96]), ("odd", b"x" * 33), ("empty", b"")):
        with pytest.raises(MediaUnreadable):
            fetcher().fetch(media.add(name, body, raw=True), AES_KEY)
    with pytest.raises(MediaUnreadable):
        fetcher().fetch(media.add("other-key", PNG), "A" * 43)


def office(folder: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr(f"{folder}document.xml", "<x/>")
    return out.getvalue()


@pytest.mark.parametrize(("data", "expected"), [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", ("image", "image/jpeg", "jpg")),
    (PNG, ("image", "image/png", "png")),
    (b"GIF89a\x01\x00", ("image", "image/gif", "gif")),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", ("image", "image/webp", "webp")),
    (b"%PDF-1.4\n", ("document", "application/pdf", "pdf")),
    (office("word/"), ("document", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                       "docx")),
    (office("xl/"), ("document", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx")),
    (office("ppt/"), ("document", "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                      "pptx")),
    (office("other/"), ("custom", "application/octet-stream", "bin")),
    (b"PK\x03\x04 not really a zip", ("custom", "application/octet-stream", "bin")),
    (b"\x00\x00\x00\x18ftypmp42", ("video", "video/mp4", "mp4")),
    (b"\x00\x00\x00\x14ftypqt  ", ("video", "video/quicktime", "mov")),
    (b"\x00\x00\x00\x18ftypheic", ("custom", "image/heic", "heic")),  # an iPhone photo: no Dify image type
    (b"\x00\x00\x00\x1cftypavif", ("custom", "image/avif", "avif")),
    (b"\x00\x00\x00\x20ftypM4A ", ("audio", "audio/mp4", "m4a")),
    (b"\x1aE\xdf\xa3\x9f", ("video", "video/webm", "webm")),
    (b"#!AMR\n", ("audio", "audio/amr", "amr")),
    (b"ID3\x04\x00", ("audio", "audio/mpeg", "mp3")),
    (b"\xff\xfb\x90\x00", ("audio", "audio/mpeg", "mp3")),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", ("audio", "audio/wav", "wav")),
    ("会议纪要：周五下午三点".encode(), ("document", "text/plain", "txt")),
    (("字" * 1366 + "尾").encode()[:4097], ("document", "text/plain", "txt")),  # a character cut at the sample's end
    (b"\x00\x01\x02binary", ("custom", "application/octet-stream", "bin")),
    (b"\xc3\x28 invalid utf-8 early", ("custom", "application/octet-stream", "bin")),
    (b"", ("custom", "application/octet-stream", "bin")),
])
def test_files_are_recognised_by_their_bytes(data: bytes, expected: tuple[str, str, str]) -> None:
    kind = sniff(data)
    assert (kind.dify_type, kind.mime, kind.extension) == expected

"""Dify's images and files back to the user, end to end: the Dify simulator announces tool files at
signed URLs (message_file, or a Chatflow's message_end.files) and serves them; the bridge shows images
in the last stream frame (msg_item) and everything else as markdown links."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

import pytest
import redis

from config import Settings
from services import metrics
from services.dify import AnswerFile
from services.media import DifyFiles
from tests.conftest import AES_KEY
from tests.helpers import InProcessWeCom, message, wait_for
from tests.media_server import MediaServer
from tests.response_server import ResponseServer
from tools.dify_files import ToolFile, demo_png
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message

PNG = demo_png(40, 30)
JPG = b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 4
GIF = b"GIF89a" + b"\x00" * 200
PDF = b"%PDF-1.7\n" + b"%" * 300


@pytest.fixture
def wecom(make_app: Any, signer: WeComSigner) -> InProcessWeCom:
    return InProcessWeCom(make_app().test_client(), signer)


def last_frame(wecom: InProcessWeCom, payload: dict[str, Any]) -> dict[str, Any]:
    first = wecom.send(payload)
    assert first is not None and "msg_item" not in first["stream"]
    frames = wecom.until_finished(first["stream"]["id"])
    assert all("msg_item" not in f["stream"] for f in frames[:-1])  # images only in the last frame
    stream: dict[str, Any] = frames[-1]["stream"]
    return stream


def images_of(stream: dict[str, Any]) -> list[bytes]:
    """The images of a frame, each checked as WeCom checks it (base64 of the raw bytes, md5 of them)."""
    out = []
    for item in stream.get("msg_item", []):
        assert item["msgtype"] == "image" and set(item["image"]) == {"base64", "md5"}
        data = base64.b64decode(item["image"]["base64"], validate=True)
        assert hashlib.md5(data).hexdigest() == item["image"]["md5"]
        out.append(data)
    return out


def count(outcome: str) -> float:
    return float(metrics.ANSWER_FILES.labels("default", outcome)._value.get())


def origin(dify: DifySimulator) -> str:
    return dify.url.removesuffix("/v1")


def test_a_tool_image_arrives_in_the_last_frame(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("画一只猫", Script(answer="画好了。", files=(ToolFile(PNG, name="cat.png"),)))
    before = count("inline")
    stream = last_frame(wecom, text_message("画一只猫"))
    assert stream["content"] == "画好了。" and images_of(stream) == [PNG]
    assert count("inline") == before + 1
    [fetched] = dify.tool_files.fetches
    assert fetched.startswith("/files/tools/")  # a relative URL, resolved against Dify's origin (not /v1)


def test_a_chatflow_image_and_document(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("report", Script(answer="见附件。", app="advanced-chat",
                                 files=(ToolFile(JPG, name="chart.jpg", mime="image/jpeg"),
                                        ToolFile(PDF, type="document", name="report 1.pdf", mime="application/pdf"))))
    stream = last_frame(wecom, text_message("report"))
    assert images_of(stream) == [JPG]
    text, link = stream["content"].split("\n\n")
    assert text == "见附件。"
    match = re.fullmatch(r"\[report 1\.pdf\]\((\S+)\)", link)  # a document: a markdown link under the answer
    assert match and match.group(1).startswith(f"{origin(dify)}/files/tools/")
    assert len(dify.tool_files.fetches) == 1  # the document itself is not downloaded


def test_images_that_cannot_go_inline_become_links(make_app: Any, signer: WeComSigner, dify: DifySimulator) -> None:
    files = (ToolFile(GIF, name="anim.gif", mime="image/gif"),  # not JPG/PNG: linked
             *(ToolFile(PNG, name=f"p{n}.png") for n in range(11)),  # 11 PNGs: WeCom takes 10
             )
    dify.script("many", Script(answer="好。", files=files))
    wecom = InProcessWeCom(make_app().test_client(), signer)
    stream = last_frame(wecom, text_message("many"))
    assert images_of(stream) == [PNG] * 10
    links = stream["content"].split("\n\n", 1)[1].split("\n")
    # a message_file frame names no file: the link is named after its URL (the tool file's id)
    assert [re.sub(r"[0-9a-f-]{36}", "ID", re.sub(r"\(.*\)", "()", line)) for line in links] == [
        "![ID.gif]()", "![ID.png]()"]


def test_the_image_budget_links_what_does_not_fit(make_app: Any, signer: WeComSigner, dify: DifySimulator) -> None:
    big = demo_png(400, 300)
    assert len(PNG) < 3000 < len(big)
    dify.script("big", Script(answer="好。", files=(ToolFile(big, name="big.png"), ToolFile(PNG, name="s.png"))))
    wecom = InProcessWeCom(make_app(answer_images_max_bytes=3000).test_client(), signer)
    stream = last_frame(wecom, text_message("big"))
    assert images_of(stream) == [PNG]  # the small one still fits
    assert re.fullmatch(r"!\[[0-9a-f-]{36}\.png\]\(\S+\)", stream["content"].split("\n\n")[1])


def test_an_unfetchable_file_is_named_with_its_link(wecom: InProcessWeCom, dify: DifySimulator,
                                                    settings: Settings) -> None:
    dify.tool_files.refuse = True  # its signed URL expired (403)
    dify.script("gone", Script(answer="好。", files=(ToolFile(PNG, name="x.png"),)))
    before = count("failed")
    stream = last_frame(wecom, text_message("gone"))
    assert "msg_item" not in stream
    note = stream["content"].split("\n\n")[1]
    prefix, suffix = settings.msg_answer_file_failed.split("{link}")
    assert note.startswith(prefix + "[") and f"]({origin(dify)}/files/tools/" in note and note.endswith(suffix)
    assert count("failed") == before + 1


def test_only_dify_and_allowlisted_hosts_are_fetched(make_app: Any, signer: WeComSigner,
                                                     dify: DifySimulator) -> None:
    other = DifySimulator().start()  # another host serving the file (think: object storage)
    try:
        record = other.tool_files.publish(ToolFile(PNG, name="cdn.png"))
        url = other.url.removesuffix("/v1") + record["url"]
        dify.script("cdn", Script(answer="好。", files=(ToolFile(url=url, name="cdn.png"),)))
        before = count("host_not_allowed")
        stream = last_frame(InProcessWeCom(make_app().test_client(), signer), text_message("cdn"))
        name = url.split("/")[-1].split("?")[0]
        assert "msg_item" not in stream and stream["content"] == f"好。\n\n![{name}]({url})"
        assert other.tool_files.fetches == [] and count("host_not_allowed") == before + 1
        port = other.url.split(":")[2].split("/")[0]
        allowed = make_app(dify_file_hosts=f"127.0.0.1:{port}")
        stream = last_frame(InProcessWeCom(allowed.test_client(), signer), text_message("cdn"))
        assert images_of(stream) == [PNG] and stream["content"] == "好。"
    finally:
        other.stop()


def test_the_users_own_upload_is_not_handed_back(make_app: Any, signer: WeComSigner, dify: DifySimulator) -> None:
    media = MediaServer(AES_KEY)
    try:
        dify.script("请看附件。", Script(answer="看到了。", app="advanced-chat"))
        wecom = InProcessWeCom(make_app(wecom_media_hosts="127.0.0.1").test_client(), signer)
        stream = last_frame(wecom, message("image", {"url": media.add("a", PNG)}))
        assert stream == {"id": stream["id"], "finish": True, "content": "看到了。"}  # no image, no link
        assert [r.path for r in dify.requests if r.method == "GET" and r.path.startswith("/files/")] == []
    finally:
        media.close()


def test_a_follow_up_carries_the_images_as_links(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                 responses: ResponseServer, settings: Settings) -> None:
    dify.script("slow", Script(answer="慢" * 40, delta_size=2, delay=0.2, files=(ToolFile(PNG, name="late.png"),)))
    app = make_app(stream_window_seconds=3.0, wecom_response_url_hosts="127.0.0.1")
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("slow", response_url=responses.url()))
    assert first is not None
    frames = wecom.until_finished(first["stream"]["id"])  # the window closes the stream at 3 s
    assert frames[-1]["stream"]["content"].endswith(settings.msg_window) and "msg_item" not in frames[-1]["stream"]
    wait_for(lambda: responses.contents(), timeout=15)
    [rest] = responses.contents()
    answer, link = rest.split("\n\n")
    assert answer == "慢" * 40 and re.fullmatch(r"!\[\S+\.png\]\(http://127\.0\.0\.1:\d+/files/tools/\S+\)", link)


# -- DifyFiles on its own: URLs, allowlist, bounds -----------------------------------------------------

def files_of(base: str = "http://127.0.0.1:5001/v1", hosts: tuple[str, ...] = (), budget: int = 1 << 20,
             timeout: float = 5.0) -> DifyFiles:
    return DifyFiles(base, hosts, budget=budget, timeout=timeout, failed_note="failed: {link}")


def test_dify_urls_resolve_against_its_origin_and_only_plain_urls_pass() -> None:
    f = files_of("https://dify.example.com/v1", hosts=("*.cdn.example",))
    assert f.resolve("/files/tools/a.png?sign=x") == "https://dify.example.com/files/tools/a.png?sign=x"
    assert f.resolve("https://x.cdn.example/a.png") == "https://x.cdn.example/a.png"
    assert f.allowed("https://dify.example.com/files/tools/a.png")
    assert f.allowed("https://DIFY.example.com:443/files/x.png") and f.allowed("https://x.cdn.example/a.png")
    for url in ("http://dify.example.com/files/x", "https://dify.example.com:8443/files/x", "https://evil.example/x",
                "https://dify.example.com\\@evil.example/files/", "https://u:p@dify.example.com/files/x",
                "http://x.cdn.example/a", "https://dify.example.com/v1/conversations"):  # Dify's API is not a file
        assert not f.allowed(url), url
    assert files_of("http://dify-api:5001/v1").allowed("http://dify-api:5001/files/tools/a.png")  # the operator's own
    assert files_of("http://[fd00::5]:5001/v1").allowed("http://[fd00::5]:5001/files/tools/a.png")  # IPv6
    for url in ("javascript:alert(1)", "data:image/png;base64,AAAA", "http://[::1/x.png", "mailto:a@b.c"):
        assert f.resolve(url) is None, url


def test_links_are_safe_markdown() -> None:
    f = files_of("http://127.0.0.1:1/v1")
    reply = f.prepare([AnswerFile(url="/files/a b(1).pdf", type="document", name="[x](y)\nz"),
                       AnswerFile(url="https://cdn.example/r.pdf\n\n**点此验证：https://phish.example**)",
                                  type="document", name="r.pdf"),
                       AnswerFile(url="javascript:alert(1)", type="document", name="evil.pdf")])
    assert reply.text.split("\n") == [
        "[x  y  z](http://127.0.0.1:1/files/a%20b%281%29.pdf)",
        "[r.pdf](https://cdn.example/r.pdf%0A%0A**%E7%82%B9%E6%AD%A4%E9%AA%8C%E8%AF%81%EF%BC%9Ahttps://phish.example**%29)",
        "evil.pdf"]  # not an http(s) URL: named, never linked


def test_while_draining_nothing_is_downloaded(dify: DifySimulator) -> None:
    record = dify.tool_files.publish(ToolFile(PNG, name="p.png"))
    reply = files_of(dify.url).prepare([AnswerFile(url=str(record["url"]), type="image", name="p.png")], inline=False)
    assert reply.images == [] and reply.text.startswith("![p.png](") and dify.tool_files.fetches == []


def test_a_download_is_bounded_in_size_time_and_never_redirected() -> None:
    media = MediaServer(AES_KEY)
    try:
        port = media.url("/").split(":")[2].split("/")[0]
        started = time.monotonic()
        reply = files_of(hosts=(f"127.0.0.1:{port}",), budget=256 * 1024, timeout=1.0).prepare(
            [AnswerFile(url=media.url(path), type="image", name=name)
             for path, name in (("/endless", "endless"), ("/redirect", "moved"), ("/slow", "slow"),
                                ("/slow", "later"))])
        assert time.monotonic() - started < 1.8  # one deadline for all of them
        time.sleep(0.3)
        assert media.sent < 16 * 1024 * 1024  # the endless body was cut off at the cap
        lines = reply.text.split("\n")
        assert lines[0].startswith("![endless](")  # too large: linked
        assert lines[1].startswith("failed: [moved](") and lines[2].startswith("failed: [slow](")
        assert lines[3].startswith("![later](")  # no time left: linked without asking
    finally:
        media.close()


def test_a_bad_file_url_never_sinks_the_answer(wecom: InProcessWeCom, dify: DifySimulator) -> None:
    dify.script("bad", Script(answer="完整的回答。", files=(ToolFile(url="http://[::1/x.png", name="x.png"),
                                                          ToolFile(PNG, name="ok.png"))))
    stream = last_frame(wecom, text_message("bad"))
    # a message_file frame names no file: the type stands for the name of one without a usable URL
    assert stream["content"] == "完整的回答。\n\nimage" and images_of(stream) == [PNG]


def test_images_that_expired_before_the_last_poll_come_as_links(wecom: InProcessWeCom, dify: DifySimulator,
                                                                redis_client: redis.Redis) -> None:
    dify.script("img", Script(answer="好。", files=(ToolFile(PNG, name="p.png"),)))
    first = wecom.send(text_message("img"))
    assert first is not None
    sid = first["stream"]["id"]
    meta = f"wecomdify:stream:{sid}:meta"
    wait_for(lambda: redis_client.hget(meta, "status") == b"done", timeout=10)
    assert 0 < redis_client.pttl(f"wecomdify:stream:{sid}:images") <= 420_000  # not the stream's 2 hours
    redis_client.delete(f"wecomdify:stream:{sid}:images")  # evicted, say
    stream = wecom.poll(sid)["stream"]
    assert "msg_item" not in stream and re.fullmatch(r"好。\n\n!\[\S+\.png\]\(http://\S+\)", stream["content"])


def test_stop_reaches_an_answer_while_its_images_download(make_app: Any, signer: WeComSigner, dify: DifySimulator,
                                                          settings: Settings) -> None:
    media = MediaServer(AES_KEY)
    try:
        port = media.url("/").split(":")[2].split("/")[0]
        dify.script("slow image", Script(answer="好。", files=(ToolFile(url=media.url("/slow"), name="s.png"),)))
        app = make_app(dify_file_hosts=f"127.0.0.1:{port}", media_timeout=4.0)
        wecom = InProcessWeCom(app.test_client(), signer)
        first = wecom.send(text_message("slow image"))
        assert first is not None
        wait_for(lambda: media.requests != [], timeout=10)  # the answer is done; its image trickles in
        ack = wecom.send(text_message("/stop"))
        assert ack is not None and ack["stream"]["content"] == settings.msg_stop_ack
        stream = wecom.until_finished(first["stream"]["id"], timeout=2)[-1]["stream"]  # not its 4 s download
        assert stream["content"].endswith(settings.msg_stopped) and "msg_item" not in stream
        before = count("failed")  # the download thread (not cancellable) ends at its deadline: let it say so
        wait_for(lambda: count("failed") == before + 1, timeout=10)
    finally:
        media.close()

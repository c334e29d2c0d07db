"""Edges of records, webhooks and moderation that the main tests leave open (found by mutation testing).

Everything runs against real servers: Redis, MariaDB, the Dify simulator and real HTTP receivers
(a canned-reply server below answers as a misbehaving moderation service or webhook receiver would).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from config import Settings
from services.moderation import AnswerGuard, WordList
from services.records import RecordDB
from services.streams.backlog import Backlog
from services.streams.keys import Keys
from services.streams.store import StreamStore
from services.webhooks import sign, verify
from tests.conftest import MySQLParams
from tests.helpers import InProcessWeCom, wait_for
from tests.hook_servers import LocalServer, ModerationServer, WebhookReceiver
from tests.procs import ROOT
from tests.test_records import fresh_db
from tools.dify_files import ToolFile
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message

SECRET = "whsec-edges-0123456789"
WORDS = ["机密", "secret plan"]
Reply = tuple[int, dict[str, str], bytes]


class Canned(LocalServer):
    """A real HTTP server answering every POST with ``reply(body)``; it keeps the bodies it got."""

    def __init__(self, reply: Callable[[dict[str, Any]], Reply]) -> None:
        self.reply = reply
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer._lock:
                    outer.bodies.append(body)
                status, headers, data = outer.reply(body)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def got(self, predicate: Callable[[dict[str, Any]], bool] = lambda _b: True) -> int:
        with self._lock:
            return sum(1 for b in self.bodies if predicate(b))


def as_json(value: Any, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


def redirect_to(url: str) -> Reply:
    return 307, {"Location": url}, b""


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for server in made:
        server.close()


@pytest.fixture
def words_file(tmp_path: Path) -> str:
    path = tmp_path / "blocked.txt"
    path.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return str(path)


def ask(app: Flask, signer: WeComSigner, query: str, **more: Any) -> list[dict[str, Any]]:
    """Send a message and poll it to its end: every frame."""
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message(query, **more))
    assert first is not None
    return [first] if first["stream"]["finish"] else wecom.until_finished(first["stream"]["id"], interval=0.02)


# --- the answer guard and the signature: exact boundaries ----------------------------------------------------------


def test_the_guard_holds_back_the_whole_tail_a_longest_word_may_need() -> None:
    async def run() -> tuple[str, str]:
        guard = AnswerGuard(WordList(WORDS), None, "*")
        early = await guard.feed("ok secret pla")  # one character short of the 11-character word
        return early, early + await guard.feed("n!") + await guard.end()

    early, shown = asyncio.run(run())
    assert early == "ok " and shown == "ok *!"  # "secret pla" (10 characters) waited for the "n"


def test_the_guard_checks_a_full_segment_without_a_sentence_end() -> None:
    checked: list[str] = []

    async def check(text: str) -> str:
        checked.append(text)
        return text

    async def run() -> list[str]:
        guard = AnswerGuard(None, check, "*")
        return [await guard.feed("a" * 199), await guard.feed("a"), await guard.feed("b"), await guard.end()]

    assert asyncio.run(run()) == ["", "a" * 200, "", "b"]  # SEGMENT (200) characters: checked and let through
    assert checked == ["a" * 200, "b"]


def test_a_signature_is_valid_exactly_to_the_tolerance_and_never_by_a_prefix() -> None:
    body, now = b'{"id":"e2"}', 1_800_000_000
    signature = sign(SECRET, now, body)
    assert verify(SECRET, str(now), body, signature, now=now + 300)
    assert verify(SECRET, str(now), body, signature, now=now - 300)
    assert not verify(SECRET, str(now), body, signature, now=now - 301)  # from the future, too far
    for forged in ("", "sha256=", signature[:-1], signature[:20]):
        assert not verify(SECRET, str(now), body, forged, now=now)


# --- the backlog -----------------------------------------------------------------------------------------------------


def test_a_consumer_gets_its_unfinished_entries_back_and_nobody_else_does(redis_client: redis.Redis) -> None:
    key = f"t:edges:{uuid.uuid4().hex[:8]}"
    backlog = Backlog(StreamStore(redis_client, Keys("t:")), key, cap=10, ttl_ms=60_000)
    assert backlog.take("w1", 10) == []  # nothing was ever added: no group yet, no error
    assert backlog.add({"kind": "x", "data": "1"})
    [entry] = backlog.take("w1", 10)
    assert entry.fields == {"kind": "x", "data": "1"}
    assert [e.id for e in backlog.take("w1", 10)] == [entry.id]  # its own unfinished entry, again at once
    assert backlog.take("w1", 10, own=False) == []  # one that keeps its retries: only once stale
    assert backlog.take("w2", 10) == []  # not stale: no other consumer takes it
    backlog.done([entry.id])
    assert backlog.size() == 0 and backlog.take("w1", 10) == []


# --- webhooks --------------------------------------------------------------------------------------------------------


def test_a_redirecting_receiver_is_not_followed_and_is_retried(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                                servers: list[Any]) -> None:
    receiver = WebhookReceiver(SECRET)
    redirector = Canned(lambda _body: redirect_to(receiver.url))
    servers += [receiver, redirector]
    app = make_app(webhook_url=redirector.url, webhook_secret=SECRET, webhook_events="answer.finished")
    assert ask(app, signer, "重定向")[-1]["stream"]["content"] == "echo: 重定向"
    wait_for(lambda: redirector.got() >= 2, timeout=15)  # a 307 is no delivery: tried again
    assert receiver.deliveries == []  # and the redirect's target never got the event


def test_an_expired_event_is_tried_once_more_and_an_unlisted_host_never(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, servers: list[Any], redis_client: redis.Redis) -> None:
    failing = Canned(lambda _body: (500, {}, b""))
    other = WebhookReceiver(SECRET)  # another port: not an allowed host of this bot
    servers += [failing, other]
    backlog = Backlog(StreamStore(redis_client, Keys("wecomdify:")), Keys("wecomdify:").webhook_events(failing.url),
                      cap=1000, ttl_ms=3_600_000)
    now_ms = int(time.time() * 1000)

    def event(eid: str) -> str:
        return json.dumps({"id": eid, "type": "answer.finished", "bot": "default", "data": {}})

    # queued two hours ago (e.g. before a restart): past WEBHOOK_DEADLINE_SECONDS (an hour)
    assert backlog.add({"url": failing.url, "event": event("old-event"), "at": str(now_ms - 7_200_000)})
    # queued for a URL the bot no longer has (WEBHOOK_URL changed since)
    assert backlog.add({"url": other.url, "event": event("moved-event"), "at": str(now_ms)})
    app = make_app(webhook_url=failing.url, webhook_secret=SECRET, webhook_events="answer.finished")
    ask(app, signer, "启动")  # starts the engine, and with it the sender
    old: Callable[[dict[str, Any]], bool] = lambda b: b.get("id") == "old-event"  # noqa: E731
    wait_for(lambda: failing.got(old) == 1, timeout=15)
    wait_for(lambda: failing.got(lambda b: b.get("type") == "answer.finished" and b.get("id") != "old-event") >= 2,
             timeout=15)  # the fresh event was retried meanwhile (1 s later)
    time.sleep(2.5)
    assert failing.got(old) == 1  # expired after its one try: never again
    remaining = [json.loads(fields[b"event"])["id"] for _id, fields in redis_client.xrange(backlog.key)]
    assert "old-event" not in remaining  # and gone from the backlog
    assert other.deliveries == []  # an unlisted host gets nothing, however long it waits


def test_answer_finished_tells_a_window_closed_and_filtered_answer(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, words_file: str, servers: list[Any]) -> None:
    receiver = WebhookReceiver(SECRET)
    servers.append(receiver)
    answer = "开头。" * 10 + "这里有机密。" + "后面。" * 200
    dify.script("窗口", Script(answer=answer, delta_size=3, delay=0.02))  # ~4 s: past the 3 s window
    app = make_app(webhook_url=receiver.url, webhook_secret=SECRET, webhook_events="answer.finished",
                   moderation_words_file=words_file, moderation_answers=True, stream_window_seconds=3.0,
                   moderation_replacement="[x]")
    ask(app, signer, "窗口")
    wait_for(lambda: receiver.events("answer.finished"), timeout=20)
    data = receiver.events("answer.finished")[0]["data"]
    assert data["status"] == "window" and data["moderation"] == "answer_filtered"
    assert data["answer"] == answer.replace("机密", "[x]")


def test_a_part_replaced_by_the_service_marks_the_answer_filtered(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, servers: list[Any]) -> None:
    receiver, moderation = WebhookReceiver(SECRET), ModerationServer(["违禁"], preset="")
    servers += [receiver, moderation]
    dify.script("一句", Script(answer="第一句。违禁的话。", delta_size=2, delay=0.005))
    app = make_app(webhook_url=receiver.url, webhook_secret=SECRET, webhook_events="answer.finished",
                   moderation_url=moderation.url, moderation_answers=True, moderation_replacement="[x]")
    assert ask(app, signer, "一句")[-1]["stream"]["content"] == "第一句。[x]"
    wait_for(lambda: receiver.events("answer.finished"), timeout=20)
    assert receiver.events("answer.finished")[0]["data"]["moderation"] == "answer_filtered"


# --- moderation ------------------------------------------------------------------------------------------------------


def test_an_unusable_moderation_reply_counts_as_unavailable(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, settings: Settings, servers: list[Any]) -> None:
    passing = ModerationServer([])  # says "not flagged" to everything
    replies: list[Reply] = []
    canned = Canned(lambda _body: replies[0])
    servers += [passing, canned]
    closed = make_app(moderation_url=canned.url, moderation_fail="closed")
    replies[:] = [redirect_to(passing.url)]  # a redirect is not followed: no answer
    assert ask(closed, signer, "问题一")[-1]["stream"]["content"] == settings.msg_moderation_refused
    assert passing.requests == []
    # valid JSON, but larger than the 256 KiB a reply may be (its first 256 KiB alone would parse too)
    replies[:] = [(200, {"Content-Type": "application/json"}, b'{"flagged": false}' + b" " * 300_000)]
    assert ask(closed, signer, "问题二")[-1]["stream"]["content"] == settings.msg_moderation_refused
    opened = make_app(moderation_url=canned.url)  # fail open
    replies[:] = [as_json({"flagged": "false"})]  # not a boolean: unusable, so asked unchecked
    assert ask(opened, signer, "问题三")[-1]["stream"]["content"] == "echo: 问题三"
    assert [r.json["query"] for r in dify.chat_requests()] == ["问题三"]


def test_an_answer_that_cannot_be_checked_is_replaced_when_failing_closed(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, servers: list[Any]) -> None:
    # questions pass; the service fails for answers
    canned = Canned(lambda body: as_json({"flagged": False}) if body.get("point") == "app.moderation.input"
                    else (503, {}, b""))
    servers.append(canned)
    app = make_app(moderation_url=canned.url, moderation_answers=True, moderation_fail="closed",
                   moderation_replacement="（无法审核）")
    assert ask(app, signer, "你好")[-1]["stream"]["content"] == "（无法审核）"
    assert canned.got(lambda b: b.get("point") == "app.moderation.output") >= 1


def test_a_file_link_and_a_replaced_answer_are_moderated_too(  # type: ignore[no-untyped-def]
        make_app, signer: WeComSigner, dify: DifySimulator, words_file: str) -> None:
    pdf = b"%PDF-1.7\n" + b"%" * 300
    dify.script("附件", Script(answer="见附件。", app="advanced-chat", files=(
        ToolFile(pdf, type="document", name="机密报告.pdf", mime="application/pdf"),)))
    dify.script("替换", Script(answer="原来的回答，很长很长。", delta_size=2, delay=0.05, replace_at=2,
                               replace_text="替换成机密内容。"))
    app = make_app(moderation_words_file=words_file, moderation_answers=True, moderation_replacement="[x]")
    content = ask(app, signer, "附件")[-1]["stream"]["content"]
    assert "机密" not in content and content.startswith("见附件。\n\n[[x]报告.pdf](")
    frames = ask(app, signer, "替换")
    assert not [f for f in frames if "机密" in f["stream"]["content"]]
    assert frames[-1]["stream"]["content"].startswith("替换成[x]内容。")


# --- records ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def db(mysql_params: MySQLParams) -> RecordDB:
    return fresh_db(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password)


def record(msgid: str, created: dt.datetime) -> dict[str, Any]:
    ms = int(created.replace(tzinfo=dt.UTC).timestamp() * 1000)
    return {"bot": "b", "msgid": msgid, "sid": msgid.ljust(32, "s"), "user_hash": "u_x", "query": "q",
            "answer": "a", "status": "finished", "created_at": ms, "finished_at": ms}


def test_the_writer_drops_unreadable_entries_and_ratings_whose_record_never_came(  # type: ignore[no-untyped-def]
        make_app, db: RecordDB, signer: WeComSigner, redis_client: redis.Redis) -> None:
    key = Keys("wecomdify:").records()
    backlog = Backlog(StreamStore(redis_client, Keys("wecomdify:")), key, cap=1000, ttl_ms=3_600_000)
    stale = int(time.time() * 1000) - 11 * 60_000  # past the 10 minutes a rating waits for its record
    assert backlog.add({"kind": "record", "data": "not json"})
    assert backlog.add({"kind": "something-else", "data": "{}"})
    assert backlog.add({"kind": "feedback", "data": json.dumps({"sid": "z" * 32, "rating": "like", "at": stale})})
    c = db.config
    app = make_app(records="mysql", mysql_host=c.host, mysql_port=c.port, mysql_user=c.user,
                   mysql_password=c.password, mysql_database=c.database)
    ask(app, signer, "记录", msgid="edge-rec")
    wait_for(lambda: [r["msgid"] for r in db.export(dt.datetime(2000, 1, 1))] == ["edge-rec"], timeout=15)
    wait_for(lambda: redis_client.xlen(key) == 0, timeout=10)  # nothing is left to be retried forever


def test_a_withdrawn_rating_and_the_export_window(db: RecordDB) -> None:
    at = dt.datetime(2026, 1, 1, 0, 0, 0)
    assert db.write([record("m1", at), record("m2", at + dt.timedelta(hours=1))]) == 0
    assert db.rate("b", "m1".ljust(32, "s"), None, "", int(time.time() * 1000))
    got = {r["msgid"]: r for r in db.export(dt.datetime(2000, 1, 1))}
    assert got["m1"]["feedback"] == "withdrawn" and got["m2"]["feedback"] is None
    assert [r["msgid"] for r in db.export(at)] == ["m1", "m2"]  # since: inclusive
    assert [r["msgid"] for r in db.export(at, at + dt.timedelta(hours=1))] == ["m1"]  # until: exclusive


def test_the_tool_refuses_zero_days_and_reads_offsets_as_utc(db: RecordDB) -> None:
    at = dt.datetime(2026, 1, 1, 0, 0, 0)
    db.write([record("tz", at)])
    c = db.config
    env = {"MYSQL_HOST": c.host, "MYSQL_PORT": str(c.port), "MYSQL_USER": c.user, "MYSQL_PASSWORD": c.password,
           "MYSQL_DATABASE": c.database, "PATH": "/usr/bin:/bin"}
    tool = [sys.executable, "-m", "tools.records"]
    zero = subprocess.run([*tool, "purge", "--days", "0"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert zero.returncode == 2 and "--days must be 1 or more" in zero.stderr
    assert [r["msgid"] for r in db.export(dt.datetime(2000, 1, 1))] == ["tz"]  # nothing deleted
    # 07:30 in UTC+8 is 23:30 UTC the day before: the record (00:00 UTC) is after it
    out = subprocess.run([*tool, "export", "--since", "2026-01-01T07:30:00+08:00"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    assert [json.loads(line)["msgid"] for line in out.stdout.splitlines()] == ["tz"]
    out = subprocess.run([*tool, "export", "--since", "2025-12-31T19:00:00-05:00"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)  # 00:00 UTC: inclusive
    assert [json.loads(line)["msgid"] for line in out.stdout.splitlines()] == ["tz"]
    out = subprocess.run([*tool, "export", "--since", "2026-01-01T09:00:00+08:00"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)  # 01:00 UTC: after it
    assert out.stdout == ""

"""Conversation records (RECORDS=mysql) on real MariaDB and real replicas: one row per message, nothing lost."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from services.mysql import MySQLConfig
from services.mysql import mysql_connection as _connection
from services.records import RecordDB
from services.streams.keys import Keys
from tests.conftest import MySQLParams
from tests.helpers import wait_for
from tests.procs import ROOT, Replica
from tests.servers import MariaDBServer
from tests.test_replicas import replica_env, wecom
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, event_message, text_message

pytestmark = pytest.mark.process

__all__ = ["wecom"]
EPOCH = dt.datetime(2000, 1, 1)


def fresh_db(host: str, port: int, user: str, password: str) -> RecordDB:
    """A new, migrated database of its own."""
    db = RecordDB(MySQLConfig(host, port, user, password, f"rec_{uuid.uuid4().hex[:10]}", connect_timeout=1.0))
    assert db.migrate() == ["records_001_conversation_records"]
    assert db.migrate() == []
    return db


def records_env(db: RecordDB, redis_url: str, dify: DifySimulator, **extra: str) -> dict[str, str]:
    c = db.config
    return replica_env(redis_url, dify, RECORDS="mysql", MYSQL_HOST=c.host, MYSQL_PORT=str(c.port),
                       MYSQL_USER=c.user, MYSQL_PASSWORD=c.password, MYSQL_DATABASE=c.database,
                       MYSQL_CONNECT_TIMEOUT="1", **extra)


@pytest.fixture
def db(mysql_params: MySQLParams) -> RecordDB:
    return fresh_db(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password)


@pytest.fixture
def pair(db: RecordDB, redis_url: str, dify: DifySimulator, redis_client: redis.Redis) -> Iterator[list[Replica]]:
    env = records_env(db, redis_url, dify, RECORDS_PLAIN_USERS="true")
    replicas = [Replica(env), Replica(env)]
    try:
        for r in replicas:
            r.start()
        yield replicas
    finally:
        for r in replicas:
            r.stop()


def db_connection(db: RecordDB) -> Any:
    return _connection(db.config, RuntimeError)


def rows(db: RecordDB) -> list[dict[str, Any]]:
    return list(db.export(EPOCH))


def test_a_conversation_through_two_replicas_gives_one_record_per_message(
        pair: list[Replica], db: RecordDB, wecom: WeComClient, dify: DifySimulator) -> None:
    a, b = (r.url for r in pair)
    dify.script("慢一点", Script(answer="慢慢来的回答。", delta_size=2, delay=0.05))
    queries = ["第一问", "慢一点", "第三问"]
    payloads = [text_message(q, userid="rec-user", msgid=f"rec-{i}") for i, q in enumerate(queries)]
    sids, started = [], time.time()
    for i, payload in enumerate(payloads):
        frames = wecom.converse([a, b] if i % 2 else [b, a], payload, interval=0.05)
        sids.append(frames[0]["stream"]["id"])
    again = wecom.send(b, payloads[0])  # a re-delivery: still one record
    assert again is not None and again["stream"]["id"] == sids[0]
    assert wecom.send(a, event_message("feedback_event", {"id": sids[1], "type": 1}, userid="rec-user")) is None
    wait_for(lambda: len(rows(db)) == 3 and rows(db)[1]["feedback"] == "like", timeout=20)
    time.sleep(1.0)  # nothing more arrives
    got = rows(db)
    assert [r["msgid"] for r in got] == ["rec-0", "rec-1", "rec-2"]
    assert [r["sid"] for r in got] == sids
    assert [r["answer"] for r in got] == ["echo: 第一问", "慢慢来的回答。", "echo: 第三问"]
    assert [r["query"] for r in got] == ["第一问", "慢一点", "第三问"]
    assert [r["feedback"] for r in got] == [None, "like", None] and got[1]["feedback_at"] is not None
    conversation = got[0]["dify_conversation_id"]
    for r in got:
        assert (r["bot"], r["status"], r["userid"], r["chat"], r["moderation"]) == \
            ("default", "finished", "rec-user", "", "")
        assert r["user_hash"].startswith("u_") and "rec-user" not in r["user_hash"]
        assert r["dify_conversation_id"] == conversation and conversation  # one conversation, carried on
        assert (r["prompt_tokens"], r["completion_tokens"], r["total_tokens"], r["currency"]) == (12, 34, 46, "USD")
        assert r["dify_latency_ms"] == 500 and r["dify_message_id"]
        assert 0 <= r["first_content_ms"] <= (r["finished_at"] - r["created_at"]).total_seconds() * 1000
        assert started - 5 < r["created_at"].replace(tzinfo=dt.UTC).timestamp() < time.time() + 5
    assert len({r["dify_message_id"] for r in got}) == 3
    assert got[1]["first_content_ms"] >= 40  # the slow answer's first text came after its first delay


def test_mysql_stopped_during_twenty_answers_and_restarted(redis_url: str, redis_client: redis.Redis,
                                                            dify: DifySimulator, wecom: WeComClient) -> None:
    server = MariaDBServer().start()
    try:
        db = fresh_db("127.0.0.1", server.port, "root", "")
        replica = Replica(records_env(db, redis_url, dify)).start()
        try:
            server.stop()
            for i in range(20):
                frames = wecom.converse([replica.url], text_message(f"停库 {i}", userid=f"u{i}", msgid=f"down-{i}"),
                                        interval=0.05)
                assert frames[-1]["stream"]["content"] == f"echo: 停库 {i}"  # answers go on, unslowed by MySQL
            key = Keys("wecomdify:").records()
            wait_for(lambda: redis_client.xlen(key) == 20, timeout=10)
            assert 0 < redis_client.pttl(key) <= 7 * 86400 * 1000  # the buffer has a TTL
            server.start()
            wait_for(lambda: len(rows(db)) == 20, timeout=60)
            time.sleep(1.0)
            got = rows(db)
            assert sorted(r["msgid"] for r in got) == sorted(f"down-{i}" for i in range(20))  # all, once each
            assert all(r["status"] == "finished" and r["userid"] is None for r in got)  # plain ids: off by default
            wait_for(lambda: redis_client.xlen(key) == 0, timeout=10)
        finally:
            replica.stop()
    finally:
        server.close()


def test_duplicates_overflow_retention_and_export(db: RecordDB, redis_client: redis.Redis, tmp_path: Any) -> None:
    from services.streams.backlog import Backlog
    from services.streams.store import StreamStore

    old = {"bot": "b", "msgid": "m1", "sid": "s" * 32, "user_hash": "u_x", "query": "q", "answer": "a", "status":
           "finished", "created_at": 1_000_000_000_000, "finished_at": 1_000_000_001_000, "total_price": "0.0000834"}
    new = {**old, "msgid": "m2", "created_at": int(time.time() * 1000), "finished_at": int(time.time() * 1000)}
    db.write([old, new])
    db.write([old, {**old, "answer": "changed"}])  # written again (a retried batch): harmless
    got = rows(db)
    assert [r["msgid"] for r in got] == ["m1", "m2"] and got[0]["answer"] == "a"
    assert str(got[0]["total_price"]) == "0.0000834000"
    assert db.rate("b", "s" * 32, "dislike", "不准确", int(time.time() * 1000))
    assert not db.rate("b", "z" * 32, "like", "", 0)  # no such record (yet)
    assert db.rate("b", "s" * 32, "like", "", int(time.time() * 1000) - 60_000)  # older than the one set: kept out
    assert rows(db)[0]["feedback"] == "dislike"
    assert db.write([{**old, "msgid": "m3", "status": "x" * 100}, {**old, "msgid": "m4"}]) == 1  # one refused
    with db_connection(db) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM conversation_records WHERE msgid = 'm4'")
    backlog = Backlog(StreamStore(redis_client, Keys("t:")), "t:records", cap=100, ttl_ms=60_000)
    assert all(backlog.add({"kind": "record", "data": "{}"}) for _ in range(100))
    assert not backlog.add({"kind": "record", "data": "{}"})  # full: refused (and counted by the caller)
    assert 0 < redis_client.pttl("t:records") <= 60_000
    env = {"MYSQL_HOST": db.config.host, "MYSQL_PORT": str(db.config.port), "MYSQL_USER": db.config.user,
           "MYSQL_PASSWORD": db.config.password, "MYSQL_DATABASE": db.config.database, "PATH": "/usr/bin:/bin"}
    tool = [sys.executable, "-m", "tools.records"]
    out = subprocess.run([*tool, "export", "--since", "2000-01-01", "--format", "csv"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    exported = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["msgid"] for r in exported] == ["m1", "m2"] and exported[0]["feedback"] == "dislike"
    assert "exported 2 records" in out.stderr
    target = tmp_path / "recent.jsonl"
    subprocess.run([*tool, "export", "--since", (dt.date.today() - dt.timedelta(days=1)).isoformat(),
                    "--output", str(target)], cwd=ROOT, env=env, capture_output=True, check=True)
    assert [json.loads(line)["msgid"] for line in target.read_text().splitlines()] == ["m2"]
    purged = subprocess.run([*tool, "purge", "--days", "30"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert purged.stdout.strip() == "deleted 1 records" and [r["msgid"] for r in rows(db)] == ["m2"]
    bad = subprocess.run([*tool, "export", "--since", "yesterday"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a date" in bad.stderr and "Traceback" not in bad.stderr
    down = subprocess.run([*tool, "migrate"], cwd=ROOT, env={**env, "MYSQL_PORT": "1"}, capture_output=True,
                          text=True)
    assert down.returncode == 2 and down.stderr.startswith("MySQL unavailable: mysql connect to")


def test_the_writer_deletes_records_past_their_retention(make_app, db: RecordDB,  # type: ignore[no-untyped-def]
                                                        signer: Any, redis_client: redis.Redis) -> None:
    from tests.helpers import InProcessWeCom

    old = {"bot": "default", "msgid": "ancient", "sid": "a" * 32, "user_hash": "u_x", "query": "q", "answer": "a",
           "status": "finished", "created_at": int((time.time() - 3 * 86400) * 1000),
           "finished_at": int((time.time() - 3 * 86400) * 1000)}
    db.write([old])
    c = db.config
    app = make_app(records="mysql", records_retention_days=2, mysql_host=c.host, mysql_port=c.port,
                   mysql_user=c.user, mysql_password=c.password, mysql_database=c.database)
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("保留期", msgid="kept"))  # starts the engine, and with it the writer
    assert first is not None
    wecom.until_finished(first["stream"]["id"])
    wait_for(lambda: [r["msgid"] for r in rows(db)] == ["kept"], timeout=15)
    assert redis_client.pttl(Keys("wecomdify:").records_purge()) > 0  # one worker of the deployment, this hour


def test_a_missing_table_says_which_tool_creates_it(mysql_params: MySQLParams) -> None:
    from services.errors import RecordsUnavailable

    config = MySQLConfig(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password, "mysql")
    with pytest.raises(RecordsUnavailable, match="a table is missing .*tools.records migrate"):
        RecordDB(config).rate("b", "s", "like", "", 0)


def test_a_rating_whose_record_is_not_there_is_looked_for_every_few_seconds(  # type: ignore[no-untyped-def]
        make_app, db: RecordDB, signer: Any) -> None:
    from tests.helpers import InProcessWeCom

    def updates() -> int:
        with db_connection(db) as conn, conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_update'")
            return int(cur.fetchone()[1])

    c = db.config
    app = make_app(records="mysql", mysql_host=c.host, mysql_port=c.port, mysql_user=c.user,
                   mysql_password=c.password, mysql_database=c.database)
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("引擎启动"))
    assert first is not None
    wecom.until_finished(first["stream"]["id"])
    wait_for(lambda: len(rows(db)) == 1, timeout=10)
    before = updates()
    wecom.send(event_message("feedback_event", {"id": "f" * 32, "type": 1}))  # an answer with no record
    time.sleep(3.0)
    assert updates() - before <= 2  # looked for once, maybe twice: not in a loop

"""Records, webhooks and moderation are off by default: no table, no thread, no key and no request is added."""

from __future__ import annotations

import threading
import time
import uuid

import redis

from services.mysql import MySQLConfig, mysql_connection
from tests.conftest import MySQLParams
from tests.helpers import InProcessWeCom, wait_for
from tools.dify_sim import DifySimulator
from tools.wecom_client import WeComSigner, event_message, text_message


def test_with_the_defaults_nothing_of_the_three_exists(make_app, signer: WeComSigner,  # type: ignore[no-untyped-def]
                                                        dify: DifySimulator, redis_client: redis.Redis,
                                                        mysql_params: MySQLParams) -> None:
    database = f"off_{uuid.uuid4().hex[:10]}"
    config = MySQLConfig(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password, database)
    with mysql_connection(config, RuntimeError, database=False) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
    before = {t.name for t in threading.enumerate()}
    app = make_app(mysql_host=mysql_params.host, mysql_port=mysql_params.port, mysql_user=mysql_params.user,
                   mysql_password=mysql_params.password, mysql_database=database)
    bridge = app.extensions["wecom_dify"]
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("默认设置"))
    assert first is not None
    sid = first["stream"]["id"]
    assert wecom.until_finished(sid)[-1]["stream"]["content"] == "echo: 默认设置"
    wecom.send(event_message("feedback_event", {"id": sid, "type": 1}))
    wait_for(lambda: any(r.path.endswith("/feedbacks") for r in dify.requests), timeout=10)
    time.sleep(0.5)
    assert bridge.engine.background.services == []  # no record writer, no webhook sender
    added = {t.name for t in threading.enumerate()} - before
    assert not [name for name in added if name.startswith(("records", "webhooks"))], added
    bot = bridge.bots["default"]
    assert (bot.records, bot.webhooks, bot.moderator) == (None, None, None)
    assert not [k for k in redis_client.scan_iter("*") if b"records" in k or b"webhooks" in k]
    with mysql_connection(config, RuntimeError) as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        assert cur.fetchall() == ()  # no table, not even the migrations'
        cur.execute(f"DROP DATABASE `{database}`")
    assert [r.json["query"] for r in dify.chat_requests()] == ["默认设置"]  # asked as sent: no moderation
    # no request: the only ones the three make go to a webhook receiver or a moderation service, and
    # nothing exists (no sender, no moderator) that could make one

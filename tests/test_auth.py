"""User authentication against a real MariaDB and a real HTTP auth server (AUTH_MODE=mysql)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import pymysql
import pytest
import redis
from flask import Flask

from app import create_app
from config import Settings
from services.streams.keys import Keys
from services.user_db import MySQLConfig, UserDB
from tests.auth_server import AuthServer
from tests.conftest import MySQLParams
from tests.helpers import InProcessWeCom, contents, wait_for
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComSigner, text_message

SECRET = "svc-secret-do-not-log"


def com_select(params: MySQLParams) -> int:
    """The server's count of SELECT statements (read over a separate connection)."""
    conn = pymysql.connect(host=params.host, port=params.port, user=params.user, password=params.password)
    with conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
        row = cur.fetchone()
    assert row is not None
    return int(row[1])


@pytest.fixture
def users(mysql_params: MySQLParams) -> UserDB:
    db = UserDB(MySQLConfig(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password,
                            "auth_test"))
    db.migrate()
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM wecom_users")
    db.upsert("zhangsan", "zs001", "张三")
    db.upsert("lisi", "ls002", "李四", enabled=False)
    return db


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    server = AuthServer(SECRET).start()
    yield server
    server.stop()


@pytest.fixture
def auth_settings(settings: Settings, users: UserDB, auth_server: AuthServer) -> Settings:
    c = users.config
    return settings.replace(auth_mode="mysql", mysql_host=c.host, mysql_port=c.port, mysql_user=c.user,
                            mysql_password=c.password, mysql_database=c.database,
                            auth_service_url=auth_server.url, auth_service_secret=SECRET,
                            dify_inputs_from_user="user_token=token,user_name=name,dept=department")


@pytest.fixture
def auth_app(auth_settings: Settings, redis_client: redis.Redis) -> Iterator[Flask]:
    app = create_app(auth_settings)
    yield app
    app.extensions["wecom_dify"].engine.drain(5)


@pytest.fixture
def wecom(auth_app: Flask, signer: WeComSigner) -> InProcessWeCom:
    return InProcessWeCom(auth_app.test_client(), signer)


def ask(wecom: InProcessWeCom, text: str, userid: str = "zhangsan") -> str:
    first = wecom.send(text_message(text, userid=userid))
    assert first is not None
    return contents(wecom.until_finished(first["stream"]["id"]))[-1]


def seed_cache(client: redis.Redis, userid: str, token: str, info: dict[str, str]) -> None:
    keys = Keys("unused:")
    client.set(keys.auth_wechatid(userid), token, ex=600)
    client.set(keys.auth_token(token), json.dumps(info), ex=600)


def test_cache_hit_needs_no_mysql_and_reaches_dify(wecom: InProcessWeCom, dify: DifySimulator,
                                                   redis_client: redis.Redis, auth_server: AuthServer,
                                                   mysql_params: MySQLParams) -> None:
    seed_cache(redis_client, "zhangsan", "cached-token", {"name": "张三", "department": "研发"})
    before = com_select(mysql_params)
    assert ask(wecom, "hello") == "echo: hello"
    assert com_select(mysql_params) - before == 0
    assert auth_server.calls == []
    [req] = dify.chat_requests()
    assert req.json["inputs"] == {"user_token": "cached-token", "user_name": "张三", "dept": "研发"}
    assert req.json["user"] == "wecom:zhangsan"
    assert req.headers["authorization"] == "Bearer app-test-key"


def test_cache_miss_looks_up_once_then_hits(wecom: InProcessWeCom, dify: DifySimulator,
                                            redis_client: redis.Redis, auth_server: AuthServer,
                                            mysql_params: MySQLParams) -> None:
    auth_server.user_info = {"department": "研发"}
    before = com_select(mysql_params)
    assert ask(wecom, "first") == "echo: first"
    assert com_select(mysql_params) - before == 1
    assert auth_server.calls == [{"account": "zs001", "wecom_userid": "zhangsan"}]
    token = redis_client.get("authorization:wechatid:zhangsan")
    assert token == b"tok-zs001-1"
    assert 3500 < redis_client.ttl("authorization:wechatid:zhangsan") <= 3600  # the API's expires_in
    assert 3500 < redis_client.ttl("authorization:token:tok-zs001-1") <= 3600
    info = json.loads(redis_client.get("authorization:token:tok-zs001-1") or b"{}")
    assert info["account"] == "zs001" and info["name"] == "张三" and info["department"] == "研发"
    assert dify.chat_requests()[0].json["inputs"]["user_token"] == "tok-zs001-1"
    before = com_select(mysql_params)
    assert ask(wecom, "second") == "echo: second"
    assert com_select(mysql_params) - before == 0
    assert len(auth_server.calls) == 1


def test_default_ttl_when_the_api_gives_no_expiry(wecom: InProcessWeCom, redis_client: redis.Redis,
                                                  auth_server: AuthServer, auth_settings: Settings) -> None:
    auth_server.expires_in = None
    ask(wecom, "hi")
    ttl = redis_client.ttl("authorization:wechatid:zhangsan")
    assert auth_settings.auth_token_ttl_seconds - 5 < ttl <= auth_settings.auth_token_ttl_seconds


def test_expired_token_is_refreshed_transparently(wecom: InProcessWeCom, dify: DifySimulator,
                                                  redis_client: redis.Redis, auth_server: AuthServer) -> None:
    redis_client.set("authorization:wechatid:zhangsan", "old-token", ex=600)  # its token key expired
    assert ask(wecom, "hi") == "echo: hi"
    assert len(auth_server.calls) == 1
    assert redis_client.get("authorization:wechatid:zhangsan") == b"tok-zs001-1"
    assert dify.chat_requests()[0].json["inputs"]["user_token"] == "tok-zs001-1"


def test_token_rejected_by_dify_is_refreshed_once(auth_settings: Settings, redis_client: redis.Redis,
                                                  signer: WeComSigner, auth_server: AuthServer) -> None:
    with DifySimulator(api_keys={"tok-zs001-1"}) as gateway:  # accepts only the fresh token
        app = create_app(auth_settings.replace(dify_auth_source="user_token", dify_base_url=gateway.url))
        seed_cache(redis_client, "zhangsan", "revoked-token", {"name": "张三"})
        assert ask(InProcessWeCom(app.test_client(), signer), "hi") == "echo: hi"
        app.extensions["wecom_dify"].engine.drain(5)
        stale, fresh = gateway.chat_requests()
        assert stale.headers["authorization"] == "Bearer revoked-token"
        assert fresh.headers["authorization"] == "Bearer tok-zs001-1"
    assert len(auth_server.calls) == 1


def test_an_upload_refused_for_a_stale_token_is_sent_again_with_a_fresh_one(
        auth_settings: Settings, redis_client: redis.Redis, signer: WeComSigner, auth_server: AuthServer) -> None:
    from tests.conftest import AES_KEY
    from tests.helpers import message
    from tests.media_server import MediaServer

    media = MediaServer(AES_KEY)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    try:
        with DifySimulator(api_keys={"tok-zs001-1"}) as gateway:  # accepts only the fresh token
            app = create_app(auth_settings.replace(dify_auth_source="user_token", dify_base_url=gateway.url,
                                                   wecom_media_hosts="127.0.0.1"))
            seed_cache(redis_client, "zhangsan", "revoked-token", {"name": "张三"})
            wecom = InProcessWeCom(app.test_client(), signer)
            first = wecom.send(message("image", {"url": media.add("p", png)}))
            assert first is not None
            assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == f"echo: {auth_settings.media_query}"
            app.extensions["wecom_dify"].engine.drain(5)
            seen = [(r.path, r.headers["authorization"].removeprefix("Bearer ")) for r in gateway.requests]
            assert seen == [("/v1/parameters", "revoked-token"), ("/v1/files/upload", "revoked-token"),
                            ("/v1/files/upload", "tok-zs001-1"), ("/v1/chat-messages", "tok-zs001-1"),
                            ("/v1/parameters", "tok-zs001-1")]  # (the last: are suggestions on?)
            assert [u.data for u in gateway.uploads.values()] == [png]
    finally:
        media.close()
    assert len(auth_server.calls) == 1


def test_stop_calls_dify_with_the_users_own_token(auth_settings: Settings, redis_client: redis.Redis,
                                                 signer: WeComSigner) -> None:
    with DifySimulator(api_keys={"user-token-zs"}) as gateway:  # the app key would be refused
        gateway.script("long", Script(answer="长" * 400, delta_size=2, delay=0.02))
        app = create_app(auth_settings.replace(dify_auth_source="user_token", dify_base_url=gateway.url))
        seed_cache(redis_client, "zhangsan", "user-token-zs", {"name": "张三"})
        wecom = InProcessWeCom(app.test_client(), signer)
        first = wecom.send(text_message("long"))
        assert first is not None
        sid = first["stream"]["id"]
        wecom.until_text(sid)
        ack = wecom.send(text_message("/stop"))
        assert ack is not None and ack["stream"]["content"] == auth_settings.msg_stop_ack
        wait_for(lambda: gateway.stop_requests())
        [stop] = gateway.stop_requests()
        assert stop.headers["authorization"] == "Bearer user-token-zs"  # not the app key
        assert stop.json == {"user": "wecom:zhangsan"}
        final = wecom.until_finished(sid)[-1]["stream"]["content"]
        assert final.endswith(auth_settings.msg_stopped) and len(final) < 400
        app.extensions["wecom_dify"].engine.drain(5)


@pytest.mark.parametrize("userid", ["stranger", "lisi"])  # unknown, disabled
def test_refused_users_never_reach_dify_and_are_negatively_cached(
        wecom: InProcessWeCom, dify: DifySimulator, auth_settings: Settings, auth_server: AuthServer,
        mysql_params: MySQLParams, redis_client: redis.Redis, userid: str) -> None:
    assert ask(wecom, "let me in", userid) == auth_settings.msg_unauthorized
    before = com_select(mysql_params)
    assert ask(wecom, "again", userid) == auth_settings.msg_unauthorized
    assert com_select(mysql_params) - before == 0  # answered from the negative cache
    assert dify.chat_requests() == [] and auth_server.calls == []
    key = Keys(auth_settings.redis_key_prefix).auth_unknown(userid)
    assert 0 < redis_client.ttl(key) <= auth_settings.auth_negative_ttl_seconds
    statuses = {redis_client.hget(k, "status") for k in redis_client.scan_iter("*stream:*:meta")}
    assert statuses == {b"done"}  # a refusal is a final answer, not a failure to retry


def test_account_refused_by_the_auth_api(wecom: InProcessWeCom, dify: DifySimulator,
                                         auth_server: AuthServer, auth_settings: Settings) -> None:
    auth_server.refused.add("zs001")
    assert ask(wecom, "hi") == auth_settings.msg_unauthorized
    assert dify.chat_requests() == []


def test_auth_api_down_then_back(wecom: InProcessWeCom, dify: DifySimulator, auth_server: AuthServer,
                                 auth_settings: Settings) -> None:
    auth_server.stop()
    assert ask(wecom, "hi") == auth_settings.msg_auth_unavailable
    assert dify.chat_requests() == []
    auth_server.start()
    assert ask(wecom, "hi again") == "echo: hi again"  # nothing negative was cached


def test_no_token_or_secret_in_logs(wecom: InProcessWeCom, caplog: pytest.LogCaptureFixture,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    ask(wecom, "secret question 机密")
    logged = caplog.text + "".join(str(vars(r)) for r in caplog.records) + "".join(capsys.readouterr())
    for needle in ("tok-zs001-1", SECRET, "secret question", "机密"):
        assert needle not in logged


def test_readyz_reports_mysql(auth_settings: Settings, redis_client: redis.Redis) -> None:
    ok = create_app(auth_settings).test_client().get("/readyz")
    assert ok.status_code == 200 and ok.get_json()["checks"] == {"redis": "ok", "mysql": "ok"}
    down = create_app(auth_settings.replace(mysql_port=1)).test_client().get("/readyz")
    assert down.status_code == 503 and down.get_json()["checks"]["mysql"].startswith("unavailable")


def users_env(monkeypatch: pytest.MonkeyPatch, params: MySQLParams, database: str) -> None:
    """Point tools.users at the test server (through the environment, as an operator would)."""
    for name, value in {"MYSQL_HOST": params.host, "MYSQL_PORT": str(params.port), "MYSQL_USER": params.user,
                        "MYSQL_PASSWORD": params.password, "MYSQL_DATABASE": database}.items():
        monkeypatch.setenv(name, value)


def test_users_tool(mysql_params: MySQLParams, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tools import users

    monkeypatch.chdir(tmp_path)
    users_env(monkeypatch, mysql_params, "tool_test")
    assert users.main(["migrate"]) == 0
    assert users.main(["migrate"]) == 0
    assert users.main(["add", "wangwu", "ww003", "--name", "王五"]) == 0
    assert users.main(["disable", "wangwu"]) == 0
    assert users.main(["disable", "nobody"]) == 1
    assert users.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "applied: 001_wecom_users" in out and "nothing (up to date)" in out
    assert "wangwu\tww003\t王五\tdisabled" in out


def test_progress_is_shown_while_authenticating(auth_settings: Settings, redis_client: redis.Redis,
                                                signer: WeComSigner, auth_server: AuthServer) -> None:
    auth_server.delay = 1.5
    app = create_app(auth_settings.replace(queued_note_after_seconds=0.2))
    wecom = InProcessWeCom(app.test_client(), signer)
    first = wecom.send(text_message("slow auth"))
    assert first is not None
    time.sleep(0.6)
    assert wecom.poll(first["stream"]["id"])["stream"] == {
        "id": first["stream"]["id"], "finish": False, "content": auth_settings.msg_authenticating}
    assert contents(wecom.until_finished(first["stream"]["id"]))[-1] == "echo: slow auth"
    app.extensions["wecom_dify"].engine.drain(5)


def test_every_key_has_a_ttl_with_auth_on(wecom: InProcessWeCom, redis_client: redis.Redis,
                                          auth_settings: Settings) -> None:
    ask(wecom, "hi")                      # refresh: shared keys written
    ask(wecom, "who am i", "stranger")    # refusal: negative cache
    keys = {k.decode() for k in redis_client.scan_iter("*")}
    assert "authorization:wechatid:zhangsan" in keys
    assert Keys(auth_settings.redis_key_prefix).auth_unknown("stranger") in keys
    assert Keys(auth_settings.redis_key_prefix).auth_lock("zhangsan") not in keys  # released after use
    for key in keys:
        assert redis_client.ttl(key) > 0, key


@pytest.mark.parametrize("down", ["api", "mysql"])
def test_failure_paths_log_no_secret(auth_settings: Settings, redis_client: redis.Redis, signer: WeComSigner,
                                     auth_server: AuthServer, caplog: pytest.LogCaptureFixture,
                                     capsys: pytest.CaptureFixture[str], down: str) -> None:
    caplog.set_level(logging.DEBUG)
    if down == "api":
        auth_server.stop()
        changes: dict[str, object] = {}
    else:
        changes = {"mysql_port": 1, "mysql_password": "db-password-do-not-log"}
    app = create_app(auth_settings.replace(**changes))
    assert ask(InProcessWeCom(app.test_client(), signer), "question 机密") == auth_settings.msg_auth_unavailable
    logged = caplog.text + "".join(str(vars(r)) for r in caplog.records) + "".join(capsys.readouterr())
    for needle in (SECRET, "db-password-do-not-log", "question", "机密"):
        assert needle not in logged
    app.extensions["wecom_dify"].engine.drain(5)


def test_users_tool_enable(mysql_params: MySQLParams, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tools import users

    monkeypatch.chdir(tmp_path)
    users_env(monkeypatch, mysql_params, "tool_enable")
    assert users.main(["migrate"]) == 0
    assert users.main(["add", "zhaoliu", "zl004"]) == 0
    assert users.main(["disable", "zhaoliu"]) == 0
    assert users.main(["enable", "zhaoliu"]) == 0
    db = UserDB(MySQLConfig(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password,
                            "tool_enable"))
    record = db.find("zhaoliu")
    assert record is not None and record.enabled


def test_auth_mode_is_per_bot_and_shares_only_the_company_keys(
        settings: Settings, users: UserDB, auth_server: AuthServer, redis_client: redis.Redis,
        dify: DifySimulator) -> None:
    from config import parse_bots

    c = users.config
    base = settings.replace(bots_file="bots.toml", mysql_host=c.host, mysql_port=c.port, mysql_user=c.user,
                            mysql_password=c.password, mysql_database=c.database,
                            auth_service_url=auth_server.url, auth_service_secret=SECRET)
    bots = parse_bots('[bots.hr]\nauth_mode = "mysql"\ndify_inputs_from_user = "user_token=token"\n'
                      f'[bots.open]\nwecom_token = "openToken1"\nwecom_encoding_aes_key = "{"O" * 43}"\n', base, {})
    app = create_app(base, bots)
    try:
        hr = InProcessWeCom(app.test_client(), WeComSigner(settings.wecom_token, settings.wecom_encoding_aes_key),
                            "/wecom/callback/hr")
        public = InProcessWeCom(app.test_client(), WeComSigner("openToken1", "O" * 43), "/wecom/callback/open")
        assert ask(hr, "你好", userid="lisi") == base.msg_unauthorized  # disabled: refused by the HR bot ...
        assert ask(public, "你好", userid="lisi") == "echo: 你好"  # ... while the open bot answers anyone
        assert ask(hr, "工资", userid="zhangsan") == "echo: 工资"
        by_user = {r.json["user"]: r.json["inputs"] for r in dify.chat_requests()}
        assert by_user == {"wecom:open:lisi": {}, "wecom:hr:zhangsan": {"user_token": "tok-zs001-1"}}
        keys = {k.decode() for k in redis_client.scan_iter(count=1000)}
        assert "wecomdify:hr:auth:unknown:lisi" in keys  # the negative cache is the bot's own
        assert {k for k in keys if not k.startswith(("wecomdify:hr:", "wecomdify:open:"))} == {
            "authorization:wechatid:zhangsan", "authorization:token:tok-zs001-1"}  # shared with company systems
        assert all(redis_client.ttl(k) > 0 for k in keys)
    finally:
        app.extensions["wecom_dify"].engine.drain(5)


def test_one_user_on_two_bots_is_looked_up_once(settings: Settings, users: UserDB, auth_server: AuthServer,
                                                redis_client: redis.Redis, dify: DifySimulator) -> None:
    """The refresh lock guards the company-wide token, so it is shared by the bots like the token."""
    import threading

    from config import parse_bots

    c = users.config
    base = settings.replace(bots_file="bots.toml", auth_mode="mysql", mysql_host=c.host, mysql_port=c.port,
                            mysql_user=c.user, mysql_password=c.password, mysql_database=c.database,
                            auth_service_url=auth_server.url, auth_service_secret=SECRET)
    bots = parse_bots(f'[bots.hr]\n[bots.it]\nwecom_token = "itToken1"\nwecom_encoding_aes_key = "{"I" * 43}"\n',
                      base, {})
    auth_server.delay = 0.5  # both bots ask while the first lookup is still running
    app = create_app(base, bots)
    try:
        clients = {"hr": InProcessWeCom(app.test_client(), WeComSigner(settings.wecom_token,
                                                                        settings.wecom_encoding_aes_key),
                                        "/wecom/callback/hr"),
                   "it": InProcessWeCom(app.test_client(), WeComSigner("itToken1", "I" * 43), "/wecom/callback/it")}
        answers: dict[str, str] = {}
        threads = [threading.Thread(target=lambda b=b: answers.__setitem__(b, ask(clients[b], f"{b} 问")))
                   for b in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == {"hr": "echo: hr 问", "it": "echo: it 问"}
        assert len(auth_server.calls) == 1  # one token issued for both bots
        assert redis_client.exists("wecomdify:auth:lock:zhangsan") == 0  # released, under the shared prefix
    finally:
        app.extensions["wecom_dify"].engine.drain(5)

"""Authentication across real processes: two gunicorn replicas, a MariaDB that stops and restarts."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from config import Settings
from services.user_db import MySQLConfig, UserDB
from tests.auth_server import AuthServer
from tests.conftest import AES_KEY, TOKEN, MySQLParams
from tests.helpers import InProcessWeCom
from tests.procs import Replica
from tests.servers import MariaDBServer
from tests.test_auth import SECRET, ask
from tests.test_replicas import replica_env
from tools.dify_sim import DifySimulator
from tools.wecom_client import WeComClient, WeComSigner, text_message

pytestmark = pytest.mark.process


@pytest.fixture
def seeded(mysql_params: MySQLParams) -> UserDB:
    db = UserDB(MySQLConfig(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password,
                            "auth_replicas"))
    db.migrate()
    db.upsert("crowd", "cr001", "Crowd")
    return db


def test_twenty_simultaneous_messages_on_two_replicas_refresh_once(
        seeded: UserDB, redis_url: str, redis_client: redis.Redis, dify: DifySimulator) -> None:
    auth = AuthServer(SECRET, delay=0.5).start()  # a slow refresh: everyone piles up behind it
    c = seeded.config
    env = replica_env(redis_url, dify, AUTH_MODE="mysql", MYSQL_HOST=c.host, MYSQL_PORT=str(c.port),
                      MYSQL_USER=c.user, MYSQL_PASSWORD=c.password, MYSQL_DATABASE=c.database,
                      AUTH_SERVICE_URL=auth.url, AUTH_SERVICE_SECRET=SECRET)
    replicas = [Replica(env).start(), Replica(env).start()]
    finals: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def send(i: int) -> None:
        try:
            client = WeComClient(WeComSigner(TOKEN, AES_KEY))
            urls = [replicas[i % 2].url, replicas[(i + 1) % 2].url]
            barrier.wait()
            frames = client.converse(urls, text_message(f"m{i}", userid="crowd"), interval=0.1, max_polls=400)
            finals.append(frames[-1]["stream"]["content"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for r in replicas:
            r.stop()
        auth.stop()
    assert not errors, errors[:3]
    assert sorted(finals) == sorted(f"echo: m{i}" for i in range(20))
    assert len(auth.calls) == 1
    assert len(dify.chat_requests()) == 20
    assert {r.json["inputs"]["token"] for r in dify.chat_requests()} == {"tok-cr001-1"}


@pytest.fixture
def private_mariadb() -> Iterator[MariaDBServer]:
    server = MariaDBServer().start()
    yield server
    server.close()


def test_mysql_stopped_then_back(private_mariadb: MariaDBServer, settings: Settings, redis_client: redis.Redis,
                                 signer: WeComSigner, dify: DifySimulator) -> None:
    from app import create_app

    db = UserDB(MySQLConfig("127.0.0.1", private_mariadb.port, "root", "", "bridge"))
    db.migrate()
    db.upsert("zhangsan", "zs001")
    auth = AuthServer(SECRET).start()
    app = create_app(settings.replace(auth_mode="mysql", mysql_port=private_mariadb.port, mysql_user="root",
                                      mysql_password="", mysql_database="bridge", mysql_connect_timeout=1.0,
                                      auth_service_url=auth.url, auth_service_secret=SECRET))
    wecom = InProcessWeCom(app.test_client(), signer)
    try:
        private_mariadb.stop()
        assert ask(wecom, "while down") == settings.msg_auth_unavailable
        assert app.test_client().get("/readyz").status_code == 503
        assert dify.chat_requests() == []
        private_mariadb.start()
        assert ask(wecom, "after restart") == "echo: after restart"
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        app.extensions["wecom_dify"].engine.drain(5)
        auth.stop()

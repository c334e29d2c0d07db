"""Shared fixtures: real Redis and MariaDB servers, settings, the app and a WeCom signer."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from config import Settings
from tests.procs import Replica
from tests.response_server import ResponseServer
from tests.servers import MariaDBServer, RedisServer
from tools.dify_sim import DifySimulator
from tools.wecom_client import WeComSigner

TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL: ``REDIS_URL`` if set, else a throwaway redis-server for the session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session's Redis, flushed before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server the test may stop and restart."""
    server = RedisServer().start()
    yield server
    server.close()


@dataclass(frozen=True)
class MySQLParams:
    """Connection parameters of the test MySQL/MariaDB server."""

    host: str
    port: int
    user: str
    password: str
    database: str


@pytest.fixture(scope="session")
def mysql_params() -> Iterator[MySQLParams]:
    """``MYSQL_*`` from the environment, else a throwaway MariaDB for the session."""
    if os.environ.get("MYSQL_HOST"):
        yield MySQLParams(os.environ["MYSQL_HOST"], int(os.environ.get("MYSQL_PORT", "3306")),
                          os.environ.get("MYSQL_USER", "root"), os.environ.get("MYSQL_PASSWORD", ""),
                          os.environ.get("MYSQL_DATABASE", "wecom_test"))
        return
    server = MariaDBServer().start()
    try:
        yield MySQLParams("127.0.0.1", server.port, server.user, server.password, server.database)
    finally:
        server.close()


@pytest.fixture(scope="session")
def dify_session() -> Iterator[DifySimulator]:
    sim = DifySimulator().start()
    yield sim
    sim.stop()


@pytest.fixture
def dify(dify_session: DifySimulator) -> DifySimulator:
    """The Dify simulator (a real HTTP server), with scripts and recorded requests reset."""
    dify_session.reset()
    return dify_session


@pytest.fixture
def settings(redis_url: str, dify: DifySimulator) -> Settings:
    """Settings for a test app on the session's Redis and the Dify simulator."""
    return Settings(wecom_token=TOKEN, wecom_encoding_aes_key=AES_KEY, redis_url=redis_url,
                    dify_base_url=dify.url, dify_api_key="app-test-key",
                    dify_read_timeout=5.0, dify_total_timeout=30.0)


@pytest.fixture
def app(settings: Settings, redis_client: redis.Redis) -> Iterator[Flask]:
    """A fresh app per test, on a flushed Redis; its engine is drained afterwards."""
    application = create_app(settings)
    yield application
    application.extensions["wecom_dify"].engine.drain(5)


@pytest.fixture
def make_app(settings: Settings, redis_client: redis.Redis) -> Iterator[Callable[..., Flask]]:
    """Build apps with some settings changed; their engines are drained afterwards."""
    made: list[Flask] = []

    def build(**changes: Any) -> Flask:
        application = create_app(settings.replace(**changes))
        made.append(application)
        return application

    yield build
    for application in made:
        application.extensions["wecom_dify"].engine.drain(5)


@pytest.fixture
def sim_replica(redis_url: str, redis_client: redis.Redis, dify: DifySimulator,
                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Replica]:
    """A gunicorn replica of the bot for ``tools.wecom_sim`` (loopback media and response_url hosts allowed),
    with the same credentials in this process's environment and no ``.env`` in the working directory."""
    env = {"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "REDIS_URL": redis_url,
           "DIFY_BASE_URL": dify.url, "DIFY_API_KEY": "app-test-key", "LOG_LEVEL": "WARNING",
           "WECOM_MEDIA_HOSTS": "127.0.0.1", "WECOM_RESPONSE_URL_HOSTS": "127.0.0.1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # wecom_sim reads the same credentials
    monkeypatch.chdir(tmp_path)  # no .env here
    server = Replica(env).start()
    yield server
    server.stop()


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """Apps a test builds itself (see ``tests.test_hardening.build``); their engines are drained afterwards."""
    made: list[Flask] = []
    yield made
    for application in made:
        application.extensions["wecom_dify"].engine.drain(2)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """The Flask test client of ``app``."""
    return app.test_client()


@pytest.fixture
def signer() -> WeComSigner:
    """Signs and encrypts callbacks exactly as WeCom does for this bot."""
    return WeComSigner(TOKEN, AES_KEY, "")


@pytest.fixture
def responses() -> Iterator[ResponseServer]:
    """A local stand-in for WeCom's response_url endpoint."""
    server = ResponseServer()
    yield server
    server.close()

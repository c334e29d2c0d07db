"""Settings: built from the environment and .env, validated with errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, Settings
from tests.conftest import AES_KEY, TOKEN

BASE = {"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY,
        "DIFY_BASE_URL": "http://127.0.0.1:9/v1", "DIFY_API_KEY": "app-test"}


def test_defaults_from_minimal_environment() -> None:
    s = Settings.from_env(BASE, dotenv=None)
    assert s.wecom_token == TOKEN
    assert s.wecom_receive_id == ""
    assert s.log_level == "INFO"
    assert s.max_request_bytes == 262144


def test_settings_are_frozen() -> None:
    s = Settings.from_env(BASE, dotenv=None)
    with pytest.raises(AttributeError):
        s.wecom_token = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({**BASE, "WECOM_TOKEN": None}, "WECOM_TOKEN"),
        ({**BASE, "WECOM_ENCODING_AES_KEY": None}, "WECOM_ENCODING_AES_KEY"),
        ({**BASE, "DIFY_BASE_URL": None}, "DIFY_BASE_URL"),
        ({**BASE, "DIFY_BASE_URL": "ftp://x/v1"}, "DIFY_BASE_URL"),
        ({**BASE, "DIFY_API_KEY": " "}, "DIFY_API_KEY"),
        ({**BASE, "DIFY_RESPONSE_MODE": "fast"}, "DIFY_RESPONSE_MODE"),
        ({**BASE, "CONVERSATION_SCOPE": "team"}, "CONVERSATION_SCOPE"),
        ({**BASE, "CONVERSATION_IDLE_SECONDS": "0"}, "CONVERSATION_IDLE_SECONDS"),
        ({**BASE, "ENGINE_CAPACITY": "0"}, "ENGINE_CAPACITY"),
        ({**BASE, "DIFY_READ_TIMEOUT": "-1"}, "DIFY_READ_TIMEOUT"),
        ({**BASE, "WECOM_ENCODING_AES_KEY": AES_KEY[:-1]}, "WECOM_ENCODING_AES_KEY"),
        ({**BASE, "WECOM_ENCODING_AES_KEY": AES_KEY + "A"}, "WECOM_ENCODING_AES_KEY"),
        ({**BASE, "WECOM_ENCODING_AES_KEY": AES_KEY[:-1] + "+"}, "WECOM_ENCODING_AES_KEY"),
        ({**BASE, "WECOM_TOKEN": ""}, "WECOM_TOKEN"),
        ({**BASE, "WECOM_TOKEN": "has space"}, "WECOM_TOKEN"),
        ({**BASE, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({**BASE, "MAX_REQUEST_BYTES": "lots"}, "MAX_REQUEST_BYTES"),
        ({**BASE, "MAX_REQUEST_BYTES": "10"}, "MAX_REQUEST_BYTES"),
        ({**BASE, "REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({**BASE, "REDIS_SOCKET_TIMEOUT": "0"}, "REDIS_SOCKET_TIMEOUT"),
        ({**BASE, "WECOM_TIMESTAMP_WINDOW_SECONDS": "-1"}, "WECOM_TIMESTAMP_WINDOW_SECONDS"),
        ({**BASE, "METRICS_PORT": "metrics"}, "METRICS_PORT"),
        ({**BASE, "METRICS_PORT": "70000"}, "METRICS_PORT"),
        ({**BASE, "METRICS_PORT": "-1"}, "METRICS_PORT"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str | None], variable: str) -> None:
    environ = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(environ, dotenv=None)
    assert err.value.variable == variable
    assert str(err.value).startswith(f"{variable}: ")


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f'WECOM_TOKEN={TOKEN}\nWECOM_ENCODING_AES_KEY="{AES_KEY}"\nLOG_LEVEL=DEBUG\n'
                      "DIFY_BASE_URL=http://127.0.0.1:9/v1\nDIFY_API_KEY=k\n")
    s = Settings.from_env({"LOG_LEVEL": "WARNING"}, dotenv=dotenv)
    assert s.wecom_encoding_aes_key == AES_KEY
    assert s.log_level == "WARNING"


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError) as err:
        Settings(wecom_token=TOKEN, wecom_encoding_aes_key="short", dify_base_url="http://d/v1",
                 dify_api_key="k")
    assert err.value.variable == "WECOM_ENCODING_AES_KEY"
    s = Settings(wecom_token=TOKEN, wecom_encoding_aes_key=AES_KEY, dify_base_url="http://d/v1",
                 dify_api_key="k")
    with pytest.raises(ConfigError):
        s.replace(redis_socket_timeout=-1.0)


def test_create_app_fails_fast_on_bad_environment(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    from app import create_app

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("WECOM_TOKEN", TOKEN)
    monkeypatch.setenv("WECOM_ENCODING_AES_KEY", "x" * 43 + "=")
    monkeypatch.setenv("DIFY_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("DIFY_API_KEY", "k")
    with pytest.raises(ConfigError, match="WECOM_ENCODING_AES_KEY"):
        create_app()
